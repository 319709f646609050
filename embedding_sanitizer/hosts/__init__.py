"""Host-free logic of each host adapter: the AUTOMATIC1111 / Forge script (a1111) and ComfyUI's
operator mode (comfy_operator). Nothing here imports a host; the adapters in scripts/ and nodes/
call these."""
