"""The grader's baseline policy for lab 5: first come, first served, answered
over the same policy protocol as a student's (so both pay the same round trip
per engine step). Grader-only: it runs as the grader, never sandboxed."""


class FCFS:
    def order(self, view):
        return [w.request_id for w in view.waiting]
