"""The `backtest` handler as an `--exec` command: the payload on stdin, progress lines to
$RIVULET_PROGRESS_FILE, the result (JSON) on stdout.

    worker-cli --workers 2 --queue backtests --exec 'backtest=python3 examples/python/backtest.py'
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    job = json.load(sys.stdin)
    days = int(job["days"])
    step = float(os.environ.get("BACKTEST_STEP_S", "0.01"))
    progress = open(os.environ["RIVULET_PROGRESS_FILE"], "w") if "RIVULET_PROGRESS_FILE" in os.environ else None
    equity = 100.0
    for day in range(days):
        equity *= 1.001
        if progress is not None and day % max(1, days // 10) == 0:
            progress.write(f"{day * 100 // days} day {day} of {days}\n")
            progress.flush()
        time.sleep(step)
    json.dump({"symbol": job["symbol"], "days": days, "final_equity": round(equity, 4)}, sys.stdout)


if __name__ == "__main__":
    main()
