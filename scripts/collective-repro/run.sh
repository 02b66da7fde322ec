#!/usr/bin/env bash
# burn-collective 0.21.0 across two processes on loopback: an orchestrator and two nodes, each
# node doing three global all-reduces of a 4-element tensor; each node is given 60 s.
#
#   cargo build --manifest-path scripts/collective-repro/Cargo.toml   # about 7 min on 2 cores
#   bash scripts/collective-repro/run.sh [tree|ring|centralized]
cd "$(dirname "$0")"
bin=target/debug/bcrepro
strategy="${1:-tree}"
$bin orchestrator 3000 > orch.log 2>&1 &
orch=$!
sleep 1
timeout 60 $bin node 0 "$strategy" 3 > node0.log 2>&1 &
a=$!
timeout 60 $bin node 1 "$strategy" 3 > node1.log 2>&1 &
b=$!
wait $a; ra=$?
wait $b; rb=$?
kill $orch 2>/dev/null
echo "strategy $strategy: node 0 exit $ra, node 1 exit $rb (124 = killed by the 60 s timeout)"
grep -h "node" node0.log node1.log | grep -v "^\s*$" | head -20
