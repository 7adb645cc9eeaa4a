"""python -m reliability {fuzz,soak,faults,crash,report,all} [key=value ...]: run the checks,
write results/reliability.md. Settings: conf/reliability.yaml (registry_dir, export_dir, examples,
minutes, rate, update_every, crash_points), e.g. ``python -m reliability soak minutes=5``.

    fuzz    schemathesis against the API's OpenAPI schema (in process, admin token set)
    soak    the API under load with label updates (default 10 min at 100 req/s)
    faults  broken exports and registries, damaged label rows, corrupt parquet files, a failed save
    crash   kill -9 the registry's writer at random instants of label updates and promotions
    report  rebuild results/reliability.md from what the others wrote (each also rebuilds it)

Each uses the registry's promoted export, its model directory and its data file unless told
otherwise (``export_dir=``); each works on scratch copies, never on the registry itself.
Figures go to results/reliability/*.json and the report to results/reliability.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

from reliability import crash, faults, fuzz, soak
from tagger.paths import PROJECT_ROOT, resolve, shown, subcommand_config

OUT = PROJECT_ROOT / "results" / "reliability"


def _fuzz(args) -> None:
    import secrets
    import sys

    from bench.servers import free_port, registry_of, server_process
    from tagger.serving.onnx_predictor import OnnxPredictor

    work = Path(tempfile.mkdtemp(prefix="tagger-fuzz-")) / "registry"
    registry_of(args.export_dir, work)  # admin updates change the scratch registry only
    try:  # a running server over real sockets, as clients reach it
        token, port = secrets.token_hex(16), free_port()
        command = [
            sys.executable,
            "-m",
            "tagger.serving",
            f"registry_dir={work}",
            f"port={port}",
            "docs=true",
        ]
        accounts = sorted(OnnxPredictor(args.export_dir).view.state.accounts)[:20]
        with server_process(command, port, {"TAGGER_ADMIN_TOKEN": token}):
            result = fuzz.fuzz_url(f"http://127.0.0.1:{port}", args.examples, token=token, accounts=accounts)
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    result["export_dir"] = shown(args.export_dir)
    fuzz.save(result, OUT)
    print("\n".join(fuzz.markdown(result)))


def _soak(args) -> None:
    result = soak.soak(args.export_dir, args.minutes, args.rate, args.update_every)
    soak.save(result, OUT)
    print("\n".join(soak.markdown(result)))


def _crash(args) -> None:
    from bench.machine import machine_description
    from reliability.crash import run_crash
    from tagger.serving.onnx_export import export_model
    from tagger.serving.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="tagger-crash-"))
    try:  # two versions of the served model (opset 17 and 18) in a scratch registry
        serving = json.loads((args.export_dir / "serving.json").read_text())
        registry = Registry(work / "registry")
        versions = [registry.register(args.export_dir, by="crash")[0]]
        export_model(Path(serving["model_dir"]), work / "other", opset=18, parity_tickets=100)
        versions.append(registry.register(work / "other", by="crash", move=True)[0])
        registry.promote(versions[0], by="crash")
        registry.close()
        result = run_crash(work / "registry", versions, int(args.crash_points))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = machine_description()
    result["export_dir"] = shown(args.export_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "crash.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=2))


def _faults(args) -> None:
    serving = json.loads((args.export_dir / "serving.json").read_text())
    model_dir = Path(serving["model_dir"])
    data = json.loads((model_dir / "data.json").read_text())
    result = faults.run_faults(args.export_dir, model_dir, Path(data["file"]))
    faults.save(result, OUT)
    print("\n".join(faults.markdown(result)))


def write_report() -> Path:
    """results/reliability.md from the JSON files present."""
    from bench.machine import machine_description

    lines = [
        "# Reliability and security",
        "",
        f"Machine: {machine_description()}. Reproduce: `python -m reliability all` "
        "(or one of fuzz, soak, faults, crash).",
    ]
    sections = [
        ("fuzz.json", "Fuzzing against the OpenAPI schema (schemathesis)", fuzz.markdown),
        ("soak.json", "Load and soak with concurrent label updates", soak.markdown),
        ("faults.json", "Fault cases", faults.markdown),
        ("crash.json", "Crash test: kill -9 the registry's writer", crash.markdown),
    ]
    for name, title, render in sections:
        path = OUT / name
        lines += ["", f"## {title}", ""]
        lines += render(json.loads(path.read_text())) if path.exists() else ["Not run yet."]
    lines += [
        "",
        "## Security measures (tests/test_security.py)",
        "",
        "- `POST /admin/labels` needs `Authorization: Bearer $TAGGER_ADMIN_TOKEN`, compared with "
        "`hmac.compare_digest` (constant time); without the variable the endpoint answers 403.",
        "- Caps (conf/serve.yaml `limits`): body 8 MB whether or not a Content-Length is sent (chunked "
        "bodies are counted as they arrive), 256 sentences per ticket, 256 tickets per batch and examples "
        "per update, 256 label changes per update, 200 characters per label name; 413 or 422 naming the "
        "field.",
        "- A request that takes longer than `limits.request_timeout_s` (10 s) answers 503; idle "
        "connections close after `timeout_keep_alive` (5 s).",
        '- No stack trace in any response: unexpected errors answer `{"detail": {"field": null, '
        '"message": "internal error"}}` with status 500 (none seen in the fuzzing above).',
        "- `python -m tagger.serving` binds to 127.0.0.1 unless `host=` says otherwise (and then warns).",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    report = OUT.parent / "reliability.md"
    report.write_text("\n".join(lines) + "\n")
    return report


COMMANDS = ("fuzz", "soak", "faults", "crash", "report", "all")


def main(argv: list[str] | None = None) -> int:
    """Entry point: a command, then ``key=value`` overrides of conf/reliability.yaml."""
    import sys

    try:
        command, cfg = subcommand_config(
            "reliability", sys.argv[1:] if argv is None else argv, __doc__, COMMANDS
        )
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    args = SimpleNamespace(command=command, **{k: cfg[k] for k in cfg})
    args.export_dir = resolve(args.export_dir) if args.export_dir else None
    if args.command != "report" and args.export_dir is None:
        from bench.servers import promoted_export

        args.export_dir = promoted_export(args.registry_dir)
    steps = {
        "fuzz": [_fuzz],
        "soak": [_soak],
        "faults": [_faults],
        "crash": [_crash],
        "report": [],
        "all": [_faults, _crash, _fuzz, _soak],
    }
    for step in steps[args.command]:
        step(args)
    print(f"wrote {write_report()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
