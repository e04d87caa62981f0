"""launch/: the launch plan (per-host commands, sweeps), its XManager jobs, multihost.sh."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("launch_plan", os.path.join(ROOT, "launch", "launch_plan.py"))
lp = importlib.util.module_from_spec(_spec)
sys.modules["launch_plan"] = lp  # dataclasses look their module up.
_spec.loader.exec_module(lp)

MULTIHOST = os.path.join(ROOT, "launch", "multihost.sh")


def test_grid_sweep_is_the_cartesian_product_last_key_fastest():
  units = lp.expand_sweep({"rl.algorithm": ["rloo", "bon_rl_s"], "seed": [0, 1, 2]})
  assert units == [{"rl.algorithm": a, "seed": s} for a in ("rloo", "bon_rl_s") for s in (0, 1, 2)]


def test_list_sweep_keeps_entries_and_drops_config_prefix():
  units = lp.expand_sweep([{"config.rl.N": 4}, {"rl.N": 8, "seed": 1}])
  assert units == [{"rl.N": 4}, {"rl.N": 8, "seed": 1}]
  assert lp.expand_sweep(None) == [{}]


@pytest.mark.parametrize("bad", [[], {"seed": []}, {"seed": 3}, [3], "seed", [{"a b": 1}]])
def test_bad_sweep_is_a_value_error(bad):
  with pytest.raises(ValueError):
    lp.expand_sweep(bad)


def test_flag_values_are_what_config_flags_parses():
  assert lp.flag_value(True) == "true"
  assert lp.flag_value((3, 4)) == "(3, 4)"
  assert lp.flag_value([5]) == "(5,)"
  assert lp.flag_value(1e-4) == "0.0001"
  assert lp.parse_override("rl.algorithm=bon_rl_s") == ("rl.algorithm", "bon_rl_s")
  assert lp.parse_override("task.num_digits=(3,4)") == ("task.num_digits", "(3,4)")
  with pytest.raises(ValueError, match="field=value"):
    lp.parse_override("rl.N")


def _plan(**kw):
  args = dict(accelerator="h100", accelerator_count=16, config="configs/demo.py",
              workdir="gs://b/exp", overrides=["rl.N_prime=32", "seed=9"],
              sweep={"rl.algorithm": ["rloo", "bon_rl_s"], "seed": [0, 1]})
  args.update(kw)
  return lp.build_plan(**args)


def test_gpu_plan_has_one_command_per_host_with_distinct_process_ids():
  plan = _plan()
  assert plan.num_hosts == 2 and plan.chips_per_host == 8 and len(plan.work_units) == 4
  workdirs = [wu.workdir for wu in plan.work_units]
  assert len(set(workdirs)) == 4 and all(w.startswith("gs://b/exp/") for w in workdirs)
  for wu in plan.work_units:
    assert [h.env["JAX_PROCESS_ID"] for h in wu.hosts] == ["0", "1"]
    for h in wu.hosts:
      assert h.env["JAX_NUM_PROCESSES"] == "2"
      assert h.argv[: len(lp.ENTRYPOINT)] == lp.ENTRYPOINT
      assert f"--workdir={wu.workdir}" in h.argv and "--config=configs/demo.py" in h.argv
      assert "--config.rl.N_prime=32" in h.argv
      # The sweep's seed wins over the base override, and appears once.
      seeds = [a for a in h.argv if a.startswith("--config.seed=")]
      assert seeds == [f"--config.seed={wu.overrides['seed']}"]
      assert f"--config.rl.algorithm={wu.overrides['rl.algorithm']}" in h.argv
  # The shell line round-trips to the same env and argv.
  h = plan.work_units[3].hosts[1]
  words = shlex.split(h.shell())
  env = dict(w.split("=", 1) for w in words[:3])
  assert env == dict(h.env) and tuple(words[3:]) == h.argv


def test_single_unit_keeps_workdir_and_single_host_sets_no_distributed_env():
  plan = _plan(accelerator_count=8, sweep=None, overrides=[])
  [wu] = plan.work_units
  assert wu.workdir == "gs://b/exp" and plan.num_hosts == 1
  assert [dict(h.env) for h in wu.hosts] == [{}]
  assert wu.hosts[0].flags == ("--config=configs/demo.py", "--workdir=gs://b/exp")


def test_tpu_plan_uses_slice_topology_and_leaves_discovery_to_jax():
  plan = _plan(accelerator="tpu_v5e", accelerator_count=16, sweep=None)
  assert (plan.num_hosts, plan.chips_per_host, plan.topology) == (2, 8, "4x4")
  assert all(not h.env for h in plan.work_units[0].hosts)
  [line] = lp.tpu_vm_commands(plan, tpu_name="pod", zone="us-west4-a")
  words = shlex.split(line)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in words
  assert "bon_jax.main" in words[-1]
  assert _plan(accelerator="tpu_v5p", accelerator_count=8, sweep=None).num_hosts == 2


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(accelerator="h100", accelerator_count=12), "multiple"),
        (dict(accelerator="tpu_v5e", accelerator_count=24), "no known tpu_v5e slice"),
        (dict(accelerator="v100"), "unknown --accelerator"),
    ],
)
def test_impossible_slices_are_one_line_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    _plan(**kw)


def test_backends_refuse_what_they_cannot_provision():
  with pytest.raises(ValueError, match="tpu_vm"):
    lp.check_backend(_plan(accelerator="tpu_v5e", accelerator_count=8), "vertex")
  with pytest.raises(ValueError, match="one host"):
    lp.check_backend(_plan(), "local")
  with pytest.raises(ValueError, match="worker pools"):
    lp.check_backend(_plan(accelerator_count=40), "vertex")
  lp.check_backend(_plan(), "vertex")


def test_xm_job_groups_carry_requirements_args_and_env():
  from xmanager import xm
  from xmanager.xm_local import executables

  plan = _plan()
  image = executables.GoogleContainerRegistryImage(name="bon_jax", image_path="gcr.io/p/bon:1")
  groups = lp.job_groups(plan, image, "vertex")
  assert len(groups) == len(plan.work_units)
  for wu, group in zip(plan.work_units, groups):
    assert sorted(group.jobs) == ["host_0", "host_1"]
    for h in wu.hosts:
      job = group.jobs[f"host_{h.host}"]
      assert job.executor.requirements.accelerator == xm.ResourceType.H100
      assert job.executor.requirements.task_requirements[xm.ResourceType.H100] == 8
      assert tuple(job.args.to_list()) == h.flags
      assert dict(job.env_vars) == dict(h.env)
  spec = lp.executable_spec("h100")
  assert spec.entrypoint.commands == [shlex.join(lp.ENTRYPOINT)]
  assert any('"jax[cuda12]"' in i for i in spec.docker_instructions)


def test_xm_launch_dry_run_prints_every_host_and_launches_nothing(tmp_path):
  sweep = tmp_path / "sweep.json"
  sweep.write_text(json.dumps([{"rl.algorithm": "rloo"}, {"rl.algorithm": "bon_rl_v"}]))
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path))
  proc = subprocess.run(
      [sys.executable, "launch/xm_launch.py", "--dry_run", "--accelerator=h100",
       "--accelerator_count=16", "--workdir=/shared/exp", f"--sweep_file={sweep}",
       "--override=rl.N_prime=32"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  host_lines = [l for l in proc.stdout.splitlines() if l.startswith("[host ")]
  assert len(host_lines) == 4
  assert sum("--config.rl.algorithm=bon_rl_v" in l for l in host_lines) == 2
  assert proc.stdout.count("# xm work unit") == 4
  bad = subprocess.run(
      [sys.executable, "launch/xm_launch.py", "--dry_run", "--accelerator=tpu_v5e",
       "--accelerator_count=8", "--workdir=/x", "--backend=vertex"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def _multihost(env_extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "CLUSTER_SPEC"))}
  env.update(env_extra, MULTIHOST_DRY_RUN="1", PYTHON=sys.executable, PATH=os.environ["PATH"])
  proc = subprocess.run(["bash", MULTIHOST, "python", "-m", "bon_jax.main", "--workdir=/w"],
                        env=env, capture_output=True, text=True, timeout=30)
  out = dict(l.split("=", 1) for l in proc.stdout.splitlines() if "=" in l)
  return proc, out


def test_multihost_reads_slurm_task_layout():
  proc, out = _multihost({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2",
                          "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "gpu[07-09,12]"})
  assert proc.returncode == 0, proc.stderr
  assert out["source"] == "slurm" and out["JAX_COORDINATOR_ADDRESS"] == "gpu07:8476"
  assert (out["JAX_NUM_PROCESSES"], out["JAX_PROCESS_ID"]) == ("4", "2")
  assert out["command"] == "python -m bon_jax.main --workdir=/w"


def test_multihost_reads_vertex_cluster_spec_over_an_unresolved_late_binding():
  spec = {"cluster": {"workerpool0": ["h0:2222"], "workerpool1": ["h1:2222", "h2:2222"]},
          "task": {"type": "workerpool1", "index": 1}}
  proc, out = _multihost({"CLUSTER_SPEC": json.dumps(spec),
                          "JAX_COORDINATOR_ADDRESS": "%objectname(workerpool0)%"})
  assert proc.returncode == 0, proc.stderr
  assert out["source"] == "vertex"
  assert (out["JAX_COORDINATOR_ADDRESS"], out["JAX_NUM_PROCESSES"], out["JAX_PROCESS_ID"]) == ("h0:2222", "3", "2")


def test_multihost_explicit_env_wins_and_partial_env_is_an_error():
  proc, out = _multihost({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                          "JAX_PROCESS_ID": "1", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"})
  assert proc.returncode == 0 and out["source"] == "environment" and out["JAX_PROCESS_ID"] == "1"
  proc, _ = _multihost({"JAX_NUM_PROCESSES": "2"})
  assert proc.returncode == 2 and proc.stderr.startswith("error:")
  proc, _ = _multihost({"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
  assert proc.returncode == 2 and "0..1" in proc.stderr
  proc, out = _multihost({})
  assert proc.returncode == 0 and out["source"] == "none" and out["JAX_NUM_PROCESSES"] == ""
