"""The only package that imports Ray: Data stages, tasks and the pipeline driver."""
