"""edgeship edge agent: runs on each device. Never imports torch, coremltools or Flask."""
