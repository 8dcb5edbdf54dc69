"""The audit job without Ray: checks before launch, what each stage depends on (resume), reusable references."""
