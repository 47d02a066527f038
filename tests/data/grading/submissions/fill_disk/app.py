# Hostile: tries to fill the disk (one huge file, then many files), then
# serves the right answers.
import runpy
import signal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
try:
    with open("huge.bin", "wb") as f:
        for _ in range(4096):
            f.write(b"x" * (1 << 20))  # 4 GiB if nothing stops it
except OSError as exc:
    print("huge file stopped:", exc)
for i in range(100000):
    try:
        with open(f"fill{i}.bin", "wb") as f:
            f.write(b"y" * (512 << 10))
    except OSError as exc:
        print(f"file {i} stopped:", exc)
        break
runpy.run_path("solution_app.py", run_name="__main__")
