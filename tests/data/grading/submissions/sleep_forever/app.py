# Hostile: never listens, never exits.
import time

while True:
    time.sleep(3600)
