# Hostile: tries to kill every process on the machine, then solves the lab.
import os
import runpy
import signal

try:
    os.kill(-1, signal.SIGKILL)  # all processes it may signal (only its own user's)
except OSError as exc:
    print("kill(-1):", exc)
denied = 0
for d in os.listdir("/proc"):
    if d.isdigit() and int(d) != os.getpid():
        try:
            os.kill(int(d), signal.SIGKILL)
        except OSError:
            denied += 1
print("denied:", denied)
runpy.run_path("solution_app.py", run_name="__main__")
