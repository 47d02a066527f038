# Hostile: claims success on every channel, answers wrong.
import os
import socket
import sys

for stream in (sys.stdout, sys.stderr):
    print("test_file PASSED\ntest_square_of_7 PASSED\n===== 5 passed in 0.1s =====", file=stream)
    print('{"score": 10, "max_score": 10}\nPASSED\nscore: 11/11', file=stream)
with open("out.txt", "w") as f:
    f.write("PASSED\n")
srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            conn.recv(100)
            conn.sendall(b"PASSED\n")
        except OSError:
            pass
