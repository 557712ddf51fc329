"""Particle swarm hyper-parameter optimisation (seed 004): swarm, distributed runs,
force-model and SOAP-kernel objectives, strategies 1 and 2."""

from oamlm_dist.hpo.objective import ForceObjective, KernelObjective, Split
from oamlm_dist.hpo.run import RunRecord, SwarmResult, evaluate_batch, run_swarm
from oamlm_dist.hpo.search import hpo_report, run_hpo
from oamlm_dist.hpo.space import Parameter, SearchSpace
from oamlm_dist.hpo.swarm import Swarm

__all__ = ["ForceObjective", "KernelObjective", "Parameter", "RunRecord", "SearchSpace",
           "Split", "Swarm", "SwarmResult", "evaluate_batch", "hpo_report", "run_hpo",
           "run_swarm"]
