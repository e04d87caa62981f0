#!/usr/bin/env bash
# Runs one bon_jax process per host of a multi-host GPU (or TPU VM) cluster.
#
#   launch/multihost.sh python -m bon_jax.main --config=configs/demo.py --workdir=/shared/run
#
# Run the same line on every host. Each process drives all the accelerators of
# its host; together they form one `jax.distributed` job whose coordinator is
# process 0. The three variables below are what
# bon_jax.sharding.initialize_distributed reads:
#
#   JAX_COORDINATOR_ADDRESS  host:port of process 0, reachable from every host
#                            (the coordinator listens on that port).
#   JAX_NUM_PROCESSES        number of processes (= hosts).
#   JAX_PROCESS_ID           this host's index, 0 .. JAX_NUM_PROCESSES-1.
#
# Where they come from, first match wins:
#   1. all three already set (any cluster: set them per host yourself);
#   2. SLURM: inside `srun`, from SLURM_NTASKS / SLURM_PROCID and the first
#      host of SLURM_JOB_NODELIST. Called from an sbatch script outside srun,
#      this script re-runs itself with `srun --ntasks-per-node=1`, so
#      `sbatch --nodes=2 --gpus-per-node=8 --wrap "launch/multihost.sh python -m bon_jax.main ..."`
#      is a whole launch;
#   3. Vertex AI (XManager's --backend=vertex): from CLUSTER_SPEC;
#   4. otherwise none is set: a single process (or a TPU VM slice, where
#      jax.distributed finds its peers by itself).
#
# JAX_COORDINATOR_PORT (default 8476) is the port used when the address is
# derived (cases 2 and 3 without a port). MULTIHOST_DRY_RUN=1 prints the
# resolved variables and the command instead of running it.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 COMMAND [ARGS...]   e.g. $0 python -m bon_jax.main --config=... --workdir=..." >&2
  exit 2
fi

PORT="${JAX_COORDINATOR_PORT:-8476}"
PY="${PYTHON:-python3}"

# First host name of a SLURM node list, e.g. "gpu[07-09,12],cpu1" -> "gpu07".
first_slurm_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
  else
    "$PY" - "$1" <<'PYEOF'
import re, sys
m = re.match(r"([^,\[]+)(?:\[([^\],]+))?", sys.argv[1])
name, rng = m.group(1), m.group(2)
print(name + (rng.split("-")[0] if rng else ""))
PYEOF
  fi
}

# The coordinator left as an unresolved XManager late binding counts as unset.
if [[ "${JAX_COORDINATOR_ADDRESS:-}" == *"%objectname("* ]]; then
  unset JAX_COORDINATOR_ADDRESS
fi

set_count=0
for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID; do
  [[ -n "${!v:-}" ]] && set_count=$((set_count + 1))
done

if [[ $set_count -eq 3 ]]; then
  source="environment"
elif [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" && -z "${MULTIHOST_IN_SRUN:-}" ]]; then
  # In an allocation but not in a job step: one task per node, then re-enter.
  export MULTIHOST_IN_SRUN=1
  exec srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 "$0" "$@"
elif [[ -n "${SLURM_PROCID:-}" && -n "${SLURM_NTASKS:-}" ]]; then
  source="slurm"
  export JAX_NUM_PROCESSES="$SLURM_NTASKS"
  export JAX_PROCESS_ID="$SLURM_PROCID"
  if [[ -z "${JAX_COORDINATOR_ADDRESS:-}" ]]; then
    export JAX_COORDINATOR_ADDRESS="$(first_slurm_host "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}"):$PORT"
  fi
elif [[ -n "${CLUSTER_SPEC:-}" ]]; then
  source="vertex"
  # Process ids run over the worker pools in order (workerpool0 first).
  read -r addr num id < <("$PY" - "$PORT" <<'PYEOF'
import json, os, sys
spec = json.loads(os.environ["CLUSTER_SPEC"])
pools = sorted(spec["cluster"], key=lambda p: int(p.removeprefix("workerpool")))
offset = {}
n = 0
for p in pools:
  offset[p] = n
  n += len(spec["cluster"][p])
addr = spec["cluster"]["workerpool0"][0]
if ":" not in addr:
  addr += ":" + sys.argv[1]
print(addr, n, offset[spec["task"]["type"]] + int(spec["task"]["index"]))
PYEOF
)
  export JAX_COORDINATOR_ADDRESS="${JAX_COORDINATOR_ADDRESS:-$addr}"
  export JAX_NUM_PROCESSES="${JAX_NUM_PROCESSES:-$num}"
  export JAX_PROCESS_ID="${JAX_PROCESS_ID:-$id}"
elif [[ $set_count -eq 0 ]]; then
  source="none"
else
  echo "error: set all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or none" >&2
  exit 2
fi

if [[ -n "${JAX_PROCESS_ID:-}" && -n "${JAX_NUM_PROCESSES:-}" ]] &&
   ! (( JAX_PROCESS_ID >= 0 && JAX_PROCESS_ID < JAX_NUM_PROCESSES )); then
  echo "error: JAX_PROCESS_ID=$JAX_PROCESS_ID must be in 0..$((JAX_NUM_PROCESSES - 1))" >&2
  exit 2
fi

if [[ -n "${MULTIHOST_DRY_RUN:-}" ]]; then
  echo "source=$source"
  echo "JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-}"
  echo "JAX_NUM_PROCESSES=${JAX_NUM_PROCESSES:-}"
  echo "JAX_PROCESS_ID=${JAX_PROCESS_ID:-}"
  echo "command=$*"
  exit 0
fi
exec "$@"
