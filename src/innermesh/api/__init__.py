"""The resource model: kinds, schemas, validation, defaulting, selectors and patches. Pure: no I/O.

- ``fielderrors``: field paths and errors in Kubernetes' words.
- ``model``: the strict pydantic base and the two validation phases.
- ``meta``: ObjectMeta, Resource, Condition, LabelSelector.
- ``names``: DNS-1123 and other name rules.
- ``selectors``: label and field selector strings.
- ``core``, ``discovery``, ``networking``, ``gateway``, ``mesh``, ``coordination``: the kinds, by group.
- ``registry``: the Kind descriptor (names, scope, table columns) and name resolution.
- ``scheme``: REGISTRY, every kind the API serves.
"""
