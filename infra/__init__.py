"""The Pulumi program that deploys Record (AWS + Kubernetes)."""
