"""The xDS side of the control plane: what each data plane is told (translator) and how (ADS server)."""
