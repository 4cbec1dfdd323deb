# The `cairn` binary, built from this repository with nixpkgs' Rust.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "cairn";
  version = "0.1.0";

  src = lib.cleanSourceWith {
    src = ../..;
    # Build inputs only: no target/, data directories or deployment files.
    filter = path: type:
      let base = baseNameOf path; in
      !(builtins.elem base [ "target" "cairn-data" "deploy" "fuzz" ".git" ]);
  };

  cargoLock.lockFile = ../../Cargo.lock;
  cargoBuildFlags = [ "--package" "cairn" ];
  # The tests start servers and read ../shared; they run in CI instead.
  doCheck = false;

  meta = {
    description = "One program for homelab metrics and logs: node-exporter + Prometheus + Promtail + Loki, with Grafana unchanged";
    license = lib.licenses.asl20;
    mainProgram = "cairn";
    platforms = lib.platforms.linux;
  };
}
