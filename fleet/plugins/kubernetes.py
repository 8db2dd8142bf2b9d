"""The `kubernetes` backend: worker agents as pods (official kubernetes client, imported only here).

Declares the settings of a kubernetes pool. Found through the `fleet.backends` entry point; the pod
lifecycle is added with the backends work.
"""

from __future__ import annotations

from pydantic import Field

from fleet.plugins.base import Backend, BackendSettings


class KubernetesSettings(BackendSettings):
    namespace: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Namespace of the agent pods.")
    image: str = Field(..., description="Image of the agent container.")
    cpu: str | None = Field(None, description="CPU request/limit, e.g. '2' or '500m'.")
    memory: str | None = Field(None, description="Memory request/limit, e.g. 4Gi.")
    gpu: int | None = Field(None, ge=0, description="GPUs per pod (nvidia.com/gpu).")
    kubeconfig: str | None = Field(None, description="Path of a kubeconfig (default: in-cluster or ~/.kube/config).")
    context: str | None = Field(None, description="kubeconfig context to use.")
    service_account: str | None = Field(None, description="Service account of the agent pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of the agent pods.")


class KubernetesBackend(Backend):
    name = "kubernetes"
    description = "agent pods on a Kubernetes cluster"
    settings_model = KubernetesSettings
