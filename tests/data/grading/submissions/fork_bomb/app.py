# Hostile: a fork bomb (bounded by RLIMIT_NPROC of the dedicated student user).
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
