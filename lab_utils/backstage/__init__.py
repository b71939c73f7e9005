"""Behind the notebook: what only the instructor command, the benchmark and the offline world use.

A learner never needs to read this package. `recipe` holds the notebook's training calls as functions (a test keeps
the two identical); `instructor`, `publish` and `release` produce and publish what learners pull; `standin`,
`local_s3` and `rouge_metric` make the offline world (a tiny model, an S3 server, ROUGE without the Hub);
`summarize_cli` is the summarize command; `inference` and `bench` measure where time and memory go.
"""
