"""HTTP routers: thin handlers over ``service.jobs.JobService``."""
