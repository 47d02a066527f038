# The labs and submissions under here are test data for the grader (run by
# `nslab grade`, with its plugin), not tests of this project.
collect_ignore_glob = ["*"]
