"""A stand-in MT command for the command backend's tests: one line in, one line out, or a chosen failure.

python mt_command_stub.py MODE [SECONDS]
  upper  each line upper-cased (after SECONDS of sleep per call, default 0)
  fail   exits with status 3 and a message on stderr, when any line contains FAIL (every call without the word works)
  short  drops the last line
  hang   sleeps SECONDS (default 60) before answering
"""

import sys
import time

mode, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None
lines = sys.stdin.read().split("\n")[:-1]
if mode == "upper":
    time.sleep(seconds or 0)
    sys.stdout.write("".join(line.upper() + "\n" for line in lines))
elif mode == "fail":
    if any("FAIL" in line for line in lines):
        print("stub: cannot translate this chunk", file=sys.stderr)
        sys.exit(3)
    sys.stdout.write("".join(line.upper() + "\n" for line in lines))
elif mode == "short":
    sys.stdout.write("".join(line + "\n" for line in lines[:-1]))
elif mode == "hang":
    time.sleep(seconds or 60)
else:
    sys.exit(f"unknown mode {mode!r}; valid: upper, fail, short, hang")
