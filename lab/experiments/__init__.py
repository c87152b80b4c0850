"""Named, small experiments: a frozen dataclass config in, a ``History`` out.

Notebooks, the command line, tests and benchmarks all call these. Each experiment module in this
package registers itself under kind ``experiment``; ``run(name, **changes)`` runs one.
"""
from lab.experiments._base import (  # noqa: F401
    check_config, config_of, config_rows, drawn_on_cpu, experiment_config_rows, experiment, field_docs, field_types, on_cpu, parse_value, replace,
    resolve_device, run, sweep,
)
