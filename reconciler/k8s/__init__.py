"""``lbctl import k8s``: Kubernetes Services and EndpointSlices as lbctl resources.

``importer`` (pure: objects -> files and warnings), ``manifests`` (files -> objects),
``outdir`` (the output directory: atomic writes, deleting only files it owns),
``crd`` (CustomResourceDefinitions from the JSON Schemas), ``cluster`` (the live
source through the ``kubernetes`` client) and ``sync`` (list + watch).
"""
