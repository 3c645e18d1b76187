"""Backends that run a pipeline's components: inductor (torch.compile), OpenVINO, IPEX."""
