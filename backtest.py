"""Rolling-origin temporal evaluation: ``python backtest.py`` (not built yet: issue 4)."""

import sys

if __name__ == "__main__":
    print("backtest.py is a stub until issue 4 (rolling-origin backtest) lands.", file=sys.stderr)
    sys.exit(2)
