# NixOS module for Cairn.
#
#   services.cairn.server    – `cairn serve`: the aggregator (ingest, storage,
#                              Prometheus and Loki APIs)
#   services.cairn.collector – `cairn collect`: this machine's metrics and
#                              logs, pushed to an aggregator
#
# `settings` is Cairn's TOML configuration (docs/configuration.md) as a Nix
# attribute set; unset keys keep Cairn's defaults. Both services run as a
# DynamicUser with ProtectSystem=strict and a StateDirectory, like the units
# in deploy/systemd.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.cairn;
  toml = pkgs.formats.toml { };

  hardening = {
    DynamicUser = true;
    UMask = "0077";
    ProtectSystem = "strict";
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    Restart = "on-failure";
    RestartSec = "2s";
    KillSignal = "SIGTERM";
  };

  settingsOption = description: lib.mkOption {
    type = toml.type;
    default = { };
    inherit description;
    example = lib.literalExpression ''
      {
        storage.logs.retention_time = "90d";
        storage.metrics.retention_size = "20GiB";
      }
    '';
  };
in
{
  options.services.cairn = {
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The cairn package.";
    };

    server = {
      enable = lib.mkEnableOption "the Cairn aggregator (`cairn serve`)";

      listenAddress = lib.mkOption {
        type = lib.types.str;
        default = "0.0.0.0";
        description = "Address the HTTP API listens on (server.listen).";
      };

      port = lib.mkOption {
        type = lib.types.port;
        default = 3100;
        description = "Port of the HTTP API: ingest, Prometheus and Loki APIs.";
      };

      insecure = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Pass `--insecure`: serve a non-loopback `listenAddress` although `settings.auth` is off (anyone who reaches the port may read and write everything). Set to false once `settings.auth` is configured (docs/auth.md), so a configuration that loses it fails to start instead.";
      };

      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Open `port` in the firewall, for collectors and Grafana on other machines.";
      };

      settings = settingsOption "Cairn configuration for the aggregator (TOML as Nix). `server.listen` and `storage.data_dir` are set from the options above.";
    };

    collector = {
      enable = lib.mkEnableOption "the Cairn collector (`cairn collect`)";

      pushUrl = lib.mkOption {
        type = lib.types.str;
        default = if cfg.server.enable then "http://127.0.0.1:${toString cfg.server.port}" else "";
        defaultText = lib.literalExpression ''"http://127.0.0.1:''${toString config.services.cairn.server.port}" when the server runs here'';
        example = "http://aggregator.lan:3100";
        description = "Base URL of the aggregator (collector.push.url).";
      };

      settings = settingsOption "Cairn configuration for the collector (TOML as Nix). `collector.push.url` and `storage.data_dir` are set from the options above.";
    };
  };

  config = lib.mkMerge [
    (lib.mkIf cfg.server.enable (
      let
        settings = lib.recursiveUpdate cfg.server.settings {
          server.listen = "${cfg.server.listenAddress}:${toString cfg.server.port}";
          storage.data_dir = "/var/lib/cairn";
        };
        file = toml.generate "cairn-server.toml" settings;
      in
      {
        systemd.services.cairn-server = {
          description = "Cairn aggregator (metrics and logs storage, Prometheus and Loki APIs)";
          wantedBy = [ "multi-user.target" ];
          after = [ "network-online.target" ];
          wants = [ "network-online.target" ];
          restartTriggers = [ file ];
          serviceConfig = hardening // {
            ExecStart = "${lib.getExe cfg.package} serve --config ${file}" + lib.optionalString cfg.server.insecure " --insecure";
            StateDirectory = "cairn";
            StateDirectoryMode = "0700";
            TimeoutStopSec = 60;
            LimitNOFILE = 65536;
            ProtectHome = true;
            ProtectProc = "invisible";
            ProcSubset = "pid";
            RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          };
        };
        networking.firewall.allowedTCPPorts = lib.mkIf cfg.server.openFirewall [ cfg.server.port ];
      }
    ))

    (lib.mkIf cfg.collector.enable (
      let
        settings = lib.recursiveUpdate cfg.collector.settings {
          collector.push.url = cfg.collector.pushUrl;
          storage.data_dir = "/var/lib/cairn-collector";
        };
        file = toml.generate "cairn-collector.toml" settings;
      in
      {
        assertions = [{
          assertion = cfg.collector.pushUrl != "";
          message = "services.cairn.collector.pushUrl must be set (no services.cairn.server on this host).";
        }];
        systemd.services.cairn-collector = {
          description = "Cairn collector (node metrics and logs, pushed to an aggregator)";
          wantedBy = [ "multi-user.target" ];
          after = [ "network-online.target" ] ++ lib.optional cfg.server.enable "cairn-server.service";
          wants = [ "network-online.target" ];
          restartTriggers = [ file ];
          serviceConfig = hardening // {
            ExecStart = "${lib.getExe cfg.package} collect --config ${file}";
            StateDirectory = "cairn-collector";
            StateDirectoryMode = "0700";
            TimeoutStopSec = 30;
            # Reading the journal. (No `adm`: NixOS has no such group by
            # default, and a missing group stops the unit from starting.)
            SupplementaryGroups = [ "systemd-journal" ];
            ReadOnlyPaths = [ "/proc" "/sys" "-/var/log" "-/run/log/journal" ];
            ProtectHome = "read-only";
            RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
          };
        };
      }
    ))
  ];
}
