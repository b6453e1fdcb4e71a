"""Code shared by every Voxmesh process: the generated API (`voxmesh.v1`) and the helpers
that the control plane and the modality services all use (server setup, configuration)."""
