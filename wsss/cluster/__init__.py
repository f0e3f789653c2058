"""Cluster configs: cluster launcher YAML, KubeRay RayJob, runtime env, local multi-node helper."""
