//! Smallest reproduction: two processes on the loopback interface, one orchestrator, each node
//! does three global all-reduces of a 4-element tensor, printing after each.
//!   bcrepro orchestrator 3000
//!   bcrepro node RANK         (RANK 0 or 1; data ports 3001 + RANK)
use std::time::Instant;

use burn_collective::{
    AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective,
    register,
};
use burn_flex::Flex;
use burn_tensor::{Tensor, TensorPrimitive};

type B = Flex;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "orchestrator" => {
            let port: u16 = args[2].parse().unwrap();
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(burn_collective::start_global_orchestrator(port));
        }
        "node" => {
            let rank: u16 = args[2].parse().unwrap();
            let strategy = match args.get(3).map(String::as_str) {
                Some("ring") => AllReduceStrategy::Ring,
                Some("centralized") => AllReduceStrategy::Centralized,
                _ => AllReduceStrategy::Tree(2),
            };
            let steps: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(3);
            let port = 3001 + rank;
            let config = CollectiveConfig::default()
                .with_num_devices(1)
                .with_num_nodes(2)
                .with_global_address("ws://127.0.0.1:3000".parse().unwrap())
                .with_node_address(format!("ws://127.0.0.1:{port}").parse().unwrap())
                .with_data_service_port(port)
                .with_global_all_reduce_strategy(strategy);
            let device = Default::default();
            let t0 = Instant::now();
            register::<B>(PeerId::from(0u32), device, config).unwrap();
            eprintln!("node {rank}: registered after {:.2}s", t0.elapsed().as_secs_f64());
            for step in 0..steps {
                let t: Tensor<B, 1> =
                    Tensor::from_floats([1.0 + rank as f32, 2.0, 3.0, 4.0 * (step + 1) as f32], &device);
                let t1 = Instant::now();
                let out = all_reduce::<B>(
                    PeerId::from(0u32),
                    t.into_primitive().tensor(),
                    ReduceOperation::Sum,
                )
                .unwrap();
                let out: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(out));
                eprintln!(
                    "node {rank}: all-reduce {step} = {:?} in {:.3}s",
                    out.into_data().to_vec::<f32>().unwrap(),
                    t1.elapsed().as_secs_f64()
                );
            }
            finish_collective::<B>(PeerId::from(0u32)).unwrap();
            eprintln!("node {rank}: finished");
        }
        _ => panic!("orchestrator PORT | node RANK [tree|ring|centralized] [STEPS]"),
    }
}
