"""`make demo` runs end to end (python -m rwkv5.demo) and shows what it promises."""
import os
import re
import subprocess
import sys


def test_demo_runs_and_modes_agree(tmp_path):
    # the demo leaves its outputs for the user to look at; here they go to tmp_path, not /tmp
    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "rwkv5.demo"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert all(p.name.startswith("rwkv5-demo-") for p in tmp_path.iterdir())
    out = r.stdout
    assert "29 documents" in out and "format binidx" in out
    assert re.search(r"--my_exit_tokens \d+ --magic_prime \d+ --ctx_len 128", out)
    m = re.search(r"max \|logit\(parallel\) - logit\(recurrent\)\| = ([0-9.e+-]+) "
                  r"\(relative to the largest \|logit\|, [0-9.]+: ([0-9.e+-]+)", out)
    assert m and float(m.group(1)) < 1e-3 and float(m.group(2)) < 1e-5, out
    assert "== 4. Generation" in out
