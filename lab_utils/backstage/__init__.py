"""Behind the notebook: what only the instructor command, the benchmark and the offline world use.

A learner never needs to read this package. `instructor` trains with the notebook's own cells; it, `publish` and
`release` produce and publish what learners pull;
`standin`, `local_s3`, `rouge_metric` and `release.start_offline_world` make the offline world (a tiny model, an S3
server holding the committed release, ROUGE without the Hub);
`summarize_cli` is the summarize command; `inference` and `bench` measure where time and memory go.
"""
