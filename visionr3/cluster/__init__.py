"""Running on a Ray cluster and what comes out of it: ``jobs.py`` (``visionr3 submit`` / ``visionr3 job``: recipes as
Ray jobs, API keys kept out of job metadata) and ``merge.py`` (``visionr3 merge``: an FSDP checkpoint into a verified
Hugging Face directory)."""
