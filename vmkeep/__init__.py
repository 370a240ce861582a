"""vmkeep: backup and recovery for VMware vSphere.

The package is one import namespace whose sub-packages live in the design card's top-level folders
(``storage/`` is ``vmkeep.storage``, ``flows/`` is ``vmkeep.flows`` …); see docs/architecture.md.
"""

__version__ = "0.1.0"
