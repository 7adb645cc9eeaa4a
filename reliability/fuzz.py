"""Fuzz the API against its own OpenAPI schema with schemathesis: every operation, data that fits
the schema (positive) and data that does not (negative), the admin endpoint with and without the
token. A 5xx response, or a response that is not JSON (but /metrics' Prometheus text), is a failure;
every request is counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.openapi import from_asgi, from_url


def fuzz_app(app, max_examples: int = 200, token: str | None = None, accounts: list[str] = ()) -> dict:
    """Run schemathesis against the ASGI ``app`` in process; see :func:`fuzz_schema`."""
    return fuzz_schema(from_asgi("/openapi.json", app), max_examples, token, accounts)


def fuzz_url(url: str, max_examples: int = 200, token: str | None = None, accounts: list[str] = ()) -> dict:
    """Run schemathesis against a running server at ``url`` over real sockets (its ``/openapi.json``
    served: ``docs=true``); see :func:`fuzz_schema`."""
    schema = from_url(f"{url}/openapi.json", wait_for_schema=30)
    return {**fuzz_schema(schema, max_examples, token, accounts), "over": "sockets"}


def fuzz_schema(schema, max_examples: int = 200, token: str | None = None, accounts: list[str] = ()) -> dict:
    """Every operation of ``schema``, positive and negative; returns counts by operation, mode and
    status, and the failing cases (at most 20). Every other generated case gets one of ``accounts``
    (real account ids) in place of its random one, so that the fuzzing reaches past the account lookup."""
    counts: Counter = Counter()
    failures: list[dict] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            guarded = operation.path.startswith("/admin") or operation.path == "/feedback"
            auths = [None, token] if token and guarded else [None]
            for auth in auths:
                key = f"{operation.method.upper()} {operation.path} [{mode.value}{', token' if auth else ''}]"
                _fuzz_one(operation, mode, auth, key, max_examples, counts, failures, list(accounts))
    by_operation: dict[str, dict[str, int]] = {}
    for (key, status), n in sorted(counts.items()):
        by_operation.setdefault(key, {})[str(status)] = n
    total = sum(counts.values())
    server_errors = sum(n for (_, status), n in counts.items() if status >= 500)
    return {
        "requests": total,
        "server_errors": server_errors,
        "failures": failures,
        "by_operation": by_operation,
        "max_examples": max_examples,
    }


def _fuzz_one(
    operation, mode, auth, key: str, max_examples: int, counts: Counter, failures: list, accounts: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {auth}"} if auth else None
    seen = Counter()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        seen["cases"] += 1
        if accounts and seen["cases"] % 2:
            _use_real_accounts(case, accounts[seen["cases"] % len(accounts)])
        response = case.call(headers=headers)
        counts[(key, response.status_code)] += 1
        problem = None
        if response.status_code >= 500:
            problem = "server error"
        elif key.startswith("GET /metrics") and "text/plain" in str(response.headers.get("content-type")):
            pass  # the Prometheus text format, as documented
        else:
            try:
                json.loads(response.content or b"null")
            except ValueError:
                problem = "not JSON"
        if problem and len(failures) < 20:
            failures.append(
                {
                    "operation": key,
                    "problem": problem,
                    "status": response.status_code,
                    "body": str(case.body)[:300],
                    "response": response.text[:300],
                }
            )

    try:
        run()
    except Unsatisfiable:  # e.g. no invalid input exists for GET /health
        counts[(key, 0)] += 0


def _use_real_accounts(case, account: str) -> None:
    if case.path_parameters and "account_id" in case.path_parameters:
        case.path_parameters["account_id"] = account
    body = case.body
    if isinstance(body, dict):
        if "account_id" in body:
            body["account_id"] = account
        for ticket in body.get("tickets", []) if isinstance(body.get("tickets"), list) else []:
            if isinstance(ticket, dict):
                ticket["account_id"] = account


def markdown(result: dict) -> list[str]:
    """The fuzzing section of results/reliability.md."""
    lines = [
        f"{result['requests']:,} requests generated from the OpenAPI schema "
        f"({'over real sockets to a running server' if result.get('over') == 'sockets' else 'in process'}, "
        "the admin routes with and without the token) "
        f"(up to {result['max_examples']} per operation and mode), "
        f"**{result['server_errors']} answered 5xx**, {len(result['failures'])} failures recorded.",
        "",
        "| operation [mode] | requests | statuses |",
        "|---|---:|---|",
    ]
    for key, statuses in result["by_operation"].items():
        if not sum(statuses.values()):
            lines.append(f"| `{key}` | 0 | no input outside the schema exists |")
            continue
        lines.append(
            f"| `{key}` | {sum(statuses.values()):,} | "
            + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()) if n)
            + " |"
        )
    for f in result["failures"]:
        lines.append(f"- FAILURE {f['operation']}: {f['problem']} ({f['status']}): {f['response'][:120]}")
    return lines


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(result, indent=2))
