"""edgeship rollout server: model registry, gray releases, statistical guards, automatic rollback."""
