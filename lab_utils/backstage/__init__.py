"""Behind the notebook: the instructor command (`instructor` runs the notebook's own training cells), the offline
release and world (`release`, `standin`, `local_s3`, `rouge_metric`), the summarize command and the benchmark."""
