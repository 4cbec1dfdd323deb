{
  description = "Cairn: node-exporter + Prometheus + Promtail + Loki in one program, with Grafana unchanged";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        cairn = pkgs.callPackage ./deploy/nixos/package.nix { };
        default = cairn;
      });

      # services.cairn.{server,collector}; the package defaults to this flake's.
      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./deploy/nixos/module.nix ];
        services.cairn.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.cairn;
      };
      nixosModules.cairn = self.nixosModules.default;

      overlays.default = final: prev: {
        cairn = final.callPackage ./deploy/nixos/package.nix { };
      };
    };
}
