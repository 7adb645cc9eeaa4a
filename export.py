"""Export a trained model to ONNX: ``python export.py`` (not built yet: issue 5)."""

import sys

if __name__ == "__main__":
    print("export.py is a stub until issue 5 (ONNX export and API) lands.", file=sys.stderr)
    sys.exit(2)
