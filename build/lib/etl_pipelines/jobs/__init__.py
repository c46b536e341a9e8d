"""Job types, one module each, named after the job type; collected by framework.registry."""
