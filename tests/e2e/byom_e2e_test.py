#!/usr/bin/python3
"""Bring your own model, end to end (docs/model.md): a plain Hugging Face Llama (bf16, one file)
and Qwen3 (fp32, two shards) written by tools/make_hf_model.py, the user's text tokenized with
the model's own tokenizer.json (ttt-tokenize), TTT parameters added by continual training
(ttt-train --init_from), evaluated against the untouched model (ttt-eval --twin), and served
(ttt-serve, driven over gRPC from Python).

What must hold:
  - TTT starts as a no-op: the model with TTT added and not yet trained scores a document exactly
    as the untouched model does, while its sessions do fold chunks into their fast weights;
  - a few training steps on the user's text make the served model better than the untouched one
    on held-out text (ttt-eval's report and the server's Score agree on the direction);
  - the served TTT model ingests text, generates, and forks like the shipped one.

Usage: byom_e2e_test.py --source REPO --server ttt-serve --train ttt-train --eval ttt-eval
                        --tokenize ttt-tokenize
"""
import argparse
import glob
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest
from e2e_support import ServeProcess, load_stubs

ARGS = None
pb = pb_grpc = grpc = None
EOS = 656  # tests/data/tokenizer_bpe: <|endoftext|>


def run(cmd, **kw):
    """Runs a tool; its output is shown when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (cmd[0], done.returncode, done.stdout,
                                                       done.stderr))
    return done.stdout + done.stderr


class Server(ServeProcess):
    """ttt-serve (e2e_support.ServeProcess) on a model folder, with a channel and a stub."""

    def __init__(self, model, work):
        super().__init__(ARGS.server, model, work, ["--threads=1"], metrics=False)
        self.start()
        self.channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = pb_grpc.TttServiceStub(self.channel)

    def read_and_score(self, document, probe):
        """A new session reads `document` (text, tokenized by the server), then scores `probe`:
        (per-token logprobs, the session's info)."""
        sid = self.stub.CreateSession(pb.CreateSessionRequest()).session_id
        list(self.stub.Ingest(iter([pb.IngestRequest(session_id=sid, text=document.encode())])))
        score = self.stub.Score(pb.ScoreRequest(session_id=sid, text=probe.encode()))
        info = self.stub.GetSession(pb.GetSessionRequest(session_id=sid))
        return list(score.logprobs), info, sid

    def stop(self):
        self.channel.close()
        super().stop()


class BringYourOwnModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="ttt-byom-")
        cls.tokenizer_dir = os.path.join(ARGS.source, "tests/data/tokenizer_bpe")
        # The user's text: the repository's own docs (train) and the sections of its READMEs (held
        # out; short, since the tiny models attend to the whole document), a document a line.
        train = [cls.read(p) for p in sorted(glob.glob(os.path.join(ARGS.source, "docs/*.md")))]
        held_out = []
        for name in ("README.md", "deploy/README.md"):
            sections = re.split(r"\n## ", cls.read(os.path.join(ARGS.source, name), flat=False))
            held_out += [" ".join(s.split())[:3000] for s in sections if len(s) > 600]
        cls.train_txt = cls.write_lines("train.txt", train)
        cls.valid_txt = cls.write_lines("valid.txt", held_out[:8])
        cls.document, cls.probe = held_out[0], held_out[1][:1500]

    @staticmethod
    def read(path, flat=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return " ".join(text.split()) if flat else text

    @classmethod
    def write_lines(cls, name, documents):
        out = os.path.join(cls.work, name)
        with open(out, "w", encoding="utf-8") as f:
            for d in documents:
                f.write(d + "\n")
        return out

    def make_plain(self, family, dtype, shards):
        out = os.path.join(self.work, family)
        run(["/usr/bin/python3", os.path.join(ARGS.source, "tools/make_hf_model.py"),
             "--family=" + family, "--dtype=" + dtype, "--shards=%d" % shards,
             "--tokenizer=" + self.tokenizer_dir, "--out=" + out, "--layers=2", "--hidden=64",
             "--intermediate=128", "--heads=4", "--kv_heads=2", "--bos=%d" % EOS,
             "--eos=%d" % EOS, "--seed=1"])
        return out

    def tokenize(self, model, text_file):
        out = text_file[:-4] + ".tok"
        with open(text_file, "rb") as src, open(out, "wb") as dst:
            done = subprocess.run([ARGS.tokenize, "--model=" + model], stdin=src, stdout=dst,
                                  stderr=subprocess.PIPE, text=False)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        with open(out) as f:
            lines = f.read().splitlines()
        with open(text_file, encoding="utf-8") as f:
            self.assertEqual(len(lines), len(f.read().splitlines()))
        self.assertTrue(all(re.fullmatch(r"\d+( \d+)*", line) for line in lines))
        return out

    def continual(self, plain, name, steps, train_tok, valid_tok):
        out = os.path.join(self.work, name)
        log = run([ARGS.train, "--init_from=" + plain, "--ttt_layers=1", "--ttt_chunk=16",
                   "--ttt_target=hidden_states", "--ttt_clip=5", "--ttt_delta_cap=8.5",
                   "--seq_len=256", "--batch=2", "--steps=%d" % steps, "--warmup=2", "--lr=1e-2", "--eval_every=1000",
                   "--log_every=1", "--threads=1", "--work_dir=" + out + ".work", "--out=" + out,
                   "--train_tokens=" + train_tok, "--valid_tokens=" + valid_tok])
        self.assertIn("continual training of " + plain + ": TTT 1", log)
        return out, log

    def test_ttt_starts_as_a_no_op_for_both_families(self):
        for family, dtype, shards in (("llama", "bfloat16", 1), ("qwen3", "float32", 2)):
            with self.subTest(family=family):
                plain = self.make_plain(family, dtype, shards)
                train_tok = self.tokenize(plain, self.train_txt)
                valid_tok = self.tokenize(plain, self.valid_txt)
                added, _ = self.continual(plain, family + "-ttt0", 0, train_tok, valid_tok)
                servers = [Server(plain, self.work), Server(added, self.work)]
                try:
                    plain_lp, plain_info, _ = servers[0].read_and_score(self.document, self.probe)
                    added_lp, added_info, _ = servers[1].read_and_score(self.document, self.probe)
                finally:
                    for s in servers:
                        s.stop()
                self.assertGreater(len(plain_lp), 100)
                self.assertEqual(len(plain_lp), len(added_lp))
                worst = max(abs(a - b) for a, b in zip(plain_lp, added_lp))
                self.assertLess(worst, 1e-4, "TTT added but untrained changed the scores")
                self.assertEqual(plain_info.counters.chunks_applied, 0)
                self.assertGreater(added_info.counters.chunks_applied, 10)

    def test_trained_model_beats_the_untouched_one_and_serves(self):
        plain = self.make_plain("llama", "bfloat16", 1)
        train_tok = self.tokenize(plain, self.train_txt)
        valid_tok = self.tokenize(plain, self.valid_txt)
        trained, log = self.continual(plain, "llama-ttt", 30, train_tok, valid_tok)
        losses = [float(x) for x in re.findall(r"^step \d+/30 .*?\| loss ([0-9.]+)", log, re.M)]
        self.assertEqual(len(losses), 30, log)
        self.assertLess(losses[-1], losses[0] - 0.25, "training did not learn: %s" % losses)

        # ttt-eval: the trained model (TTT on, TTT off) against the untouched one as the twin.
        report = os.path.join(self.work, "eval.md")
        os.makedirs(os.path.join(self.work, "plots"), exist_ok=True)
        out = run([ARGS.eval, "--model=" + trained, "--twin=" + plain,
                   "--valid_tokens=" + valid_tok, "--test_tokens=" + valid_tok,
                   "--stream_tokens=1024", "--reread_docs=1", "--reread_len=128",
                   "--reread_others=0", "--recall_episodes=8", "--threads=1",
                   "--out_md=" + report, "--out_dir=" + os.path.join(self.work, "plots"),
                   "--work_dir=" + os.path.join(self.work, "eval"), "--command=byom_e2e_test"])
        rows = dict(re.findall(r"^(TTT on \(.*?\)|same weights, TTT off|plain twin)\s+documents "
                               r"([0-9.]+)", out, re.M))
        self.assertEqual(len(rows), 3, out)
        ttt_on = next(v for k, v in rows.items() if k.startswith("TTT on"))
        self.assertLess(float(ttt_on), float(rows["plain twin"]) - 0.3, out)
        self.assertTrue(os.path.getsize(report) > 0)

        # Served: the trained model scores held-out text better than the untouched one, generates
        # and forks.
        servers = [Server(plain, self.work), Server(trained, self.work)]
        try:
            untouched_lp, _, _ = servers[0].read_and_score(self.document, self.probe)
            trained_lp, info, sid = servers[1].read_and_score(self.document, self.probe)
            stub = servers[1].stub
            generated = list(stub.Generate(pb.GenerateRequest(
                session_id=sid, prompt_text=b"The server", max_tokens=8, temperature=0.0,
                ignore_eos=True)))
            fork = stub.Fork(pb.ForkRequest(session_id=sid)).session_id
            probe = self.probe[:300].encode()
            parent_score = stub.Score(pb.ScoreRequest(session_id=sid, text=probe))
            fork_score = stub.Score(pb.ScoreRequest(session_id=fork, text=probe))
        finally:
            for s in servers:
                s.stop()
        mean = lambda lp: -sum(lp) / len(lp)
        print("byom: training loss %.3f -> %.3f; ttt-eval documents %s (twin %s); served "
              "probe %.3f (untouched %.3f) nats/token" % (losses[0], losses[-1], ttt_on,
              rows["plain twin"], mean(trained_lp), mean(untouched_lp)), file=sys.stderr)
        self.assertLess(mean(trained_lp), mean(untouched_lp) - 0.3)
        self.assertGreater(info.counters.chunks_applied, 10)
        self.assertEqual(sum(1 for g in generated if g.HasField("token_id")), 8)
        self.assertEqual(list(parent_score.logprobs), list(fork_score.logprobs))
        self.assertTrue(all(math.isfinite(x) for x in trained_lp))


def main():
    global ARGS, pb, pb_grpc, grpc
    parser = argparse.ArgumentParser()
    for flag in ("source", "server", "train", "eval", "tokenize"):
        parser.add_argument("--" + flag, required=True)
    ARGS, rest = parser.parse_known_args()
    import grpc as grpc_module
    grpc = grpc_module
    pb, pb_grpc = load_stubs(os.path.join(ARGS.source, "proto"),
                             tempfile.mkdtemp(prefix="ttt-stubs-"))
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
