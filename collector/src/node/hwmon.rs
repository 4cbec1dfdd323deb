//! Hardware sensors under `<sys>/class/hwmon` (`node_hwmon_*`) and thermal
//! zones / cooling devices under `<sys>/class/thermal`
//! (`node_thermal_zone_temp`, `node_cooling_device_*`), named as
//! node_exporter 1.5's hwmon and thermal_zone collectors name them.
//!
//! hwmon, as node_exporter does it:
//! - the `chip` label is derived from the `device` link
//!   (`<parent dir>_<device dir>`, e.g. `platform_coretemp_0`), else from the
//!   `name` file, else the `hwmonN` directory, each lower-cased with
//!   characters outside `[a-z0-9:_]` turned into `_`;
//! - sensor files `<type><n>[_<property>]` of the types in
//!   [`SENSOR_TYPES`] are read from the hwmon directory and its `device/`;
//! - the `sensor` label is `<type><n>` (`temp1`); a `<type><n>_label` file
//!   goes into `node_hwmon_sensor_label{chip,sensor,label}` and the chip's
//!   `name` into `node_hwmon_chip_names{chip,chip_name}`;
//! - each property becomes its own family with a unit suffix and scale:
//!   `temp1_input` → `node_hwmon_temp_celsius` (milli-°C / 1000),
//!   `temp1_crit` → `node_hwmon_temp_crit_celsius`, `in0_input` →
//!   `node_hwmon_in_volts`, `fan1_input` → `node_hwmon_fan_rpm`, …
//!
//! The families depend on the hardware, so their type and help are recorded
//! as they are first seen (see [`Dynamic`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::{Dynamic, Metric};

/// Sensor types node_exporter reads (its `hwmonSensorTypes`).
pub const SENSOR_TYPES: [&str; 13] = [
    "vrm",
    "beep_enable",
    "update_interval",
    "in",
    "cpu",
    "fan",
    "pwm",
    "temp",
    "curr",
    "power",
    "energy",
    "humidity",
    "intrusion",
];

/// node_exporter's `cleanMetricName`: lower-case, `[^a-z0-9:_]` → `_`,
/// leading and trailing `_` trimmed.
fn clean(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' { c } else { '_' }
        })
        .collect();
    s.trim_matches('_').to_string()
}

/// Splits a sensor file name into `(type, number, property)` as
/// node_exporter's `^([^0-9]+)([0-9]*)?(_(.+))?$` does.
fn explode(name: &str) -> Option<(&str, u32, &str)> {
    let type_end = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
    if type_end == 0 {
        return None;
    }
    let (typ, rest) = name.split_at(type_end);
    let num_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let (digits, rest) = rest.split_at(num_end);
    let num = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    let prop = match rest {
        "" => "",
        r => r.strip_prefix('_').filter(|p| !p.is_empty())?,
    };
    Some((typ, num, prop))
}

/// Reads a sysfs attribute: at most 4 KiB, trailing newlines trimmed. Some
/// broken drivers fail reads (EAGAIN, EIO); that attribute is skipped.
fn read_attr(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::with_capacity(64);
    f.take(4096).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).trim_matches('\n').to_string())
}

type SensorData = BTreeMap<String, BTreeMap<String, String>>;

fn collect_sensor_data(dir: &Path, data: &mut SensorData) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((typ, num, prop)) = explode(name) else { continue };
        if !SENSOR_TYPES.contains(&typ) {
            continue;
        }
        if let Some(v) = read_attr(&entry.path()) {
            data.entry(format!("{typ}{num}")).or_default().insert(prop.to_string(), v);
        }
    }
    Ok(())
}

/// The `chip` label of a hwmon directory (node_exporter's `hwmonName`).
fn chip_name(dir: &Path) -> Option<String> {
    if let Ok(dev) = std::fs::canonicalize(dir.join("device")) {
        let dev_name = dev.file_name().map(|n| clean(&n.to_string_lossy())).unwrap_or_default();
        let dev_type =
            dev.parent().and_then(|p| p.file_name()).map(|n| clean(&n.to_string_lossy())).unwrap_or_default();
        if !dev_type.is_empty() && !dev_name.is_empty() {
            return Some(format!("{dev_type}_{dev_name}"));
        }
        if !dev_name.is_empty() {
            return Some(dev_name);
        }
    }
    if let Some(n) = read_attr(&dir.join("name")).map(|n| clean(&n)).filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let real = std::fs::canonicalize(dir).ok()?;
    Some(clean(&real.file_name()?.to_string_lossy())).filter(|n| !n.is_empty())
}

/// Collects `node_hwmon_*` from `<sys>/class/hwmon`. No such directory (a VM,
/// a container without `/sys`) is not an error: there is nothing to report.
pub(crate) fn collect_hwmon(sys: &Path, dynamic: &mut Dynamic) -> Result<Vec<Metric>, String> {
    let base = sys.join("class/hwmon");
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let Some(chip) = chip_name(&dir) else { continue };
        let mut data = SensorData::new();
        if collect_sensor_data(&dir, &mut data).is_err() {
            continue;
        }
        if dir.join("device").exists() {
            let _ = collect_sensor_data(&dir.join("device"), &mut data);
        }
        if let Some(n) = read_attr(&dir.join("name")).map(|n| clean(&n)).filter(|n| !n.is_empty()) {
            dynamic
                .note("node_hwmon_chip_names", "gauge", &|| "Annotation metric for human-readable chip names".into());
            out.push(Metric {
                name: "node_hwmon_chip_names".into(),
                labels: vec![("chip", chip.clone()), ("chip_name", n)],
                value: 1.0,
            });
        }
        sensor_metrics(&chip, &data, dynamic, &mut out);
    }
    Ok(out)
}

fn sensor_metrics(chip: &str, data: &SensorData, dynamic: &mut Dynamic, out: &mut Vec<Metric>) {
    for (sensor, props) in data {
        let Some((typ, _, _)) = explode(sensor) else { continue };
        let labels = || vec![("chip", chip.to_string()), ("sensor", sensor.clone())];
        if let Some(label) = props.get("label").map(|l| clean(l)).filter(|l| !l.is_empty()) {
            dynamic.note("node_hwmon_sensor_label", "gauge", &|| "Label for given chip and sensor".into());
            out.push(Metric {
                name: "node_hwmon_sensor_label".into(),
                labels: vec![("chip", chip.to_string()), ("label", label), ("sensor", sensor.clone())],
                value: 1.0,
            });
        }
        let mut push = |name: String, kind: &'static str, help: &dyn Fn() -> String, value: f64| {
            dynamic.note(&name, kind, help);
            out.push(Metric { name, labels: labels(), value });
        };
        let bare = props.get("").and_then(|v| v.parse::<f64>().ok());
        match typ {
            "beep_enable" => {
                let v = if props.get("").map(String::as_str) == Some("1") { 1.0 } else { 0.0 };
                push("node_hwmon_beep_enabled".into(), "gauge", &|| "Hardware beep enabled".into(), v);
                continue;
            }
            "vrm" => {
                if let Some(v) = bare {
                    push(
                        "node_hwmon_voltage_regulator_version".into(),
                        "gauge",
                        &|| "Hardware voltage regulator".into(),
                        v,
                    );
                }
                continue;
            }
            "update_interval" => {
                if let Some(v) = bare {
                    push(
                        "node_hwmon_update_interval_seconds".into(),
                        "gauge",
                        &|| "Hardware monitor update interval".into(),
                        v * 0.001,
                    );
                }
                continue;
            }
            _ => {}
        }
        let prefix = format!("node_hwmon_{typ}");
        for (element, value) in props {
            if element == "label" {
                continue;
            }
            let Ok(v) = value.parse::<f64>() else { continue };
            let mut name = prefix.clone();
            if element == "input" {
                if props.contains_key("") {
                    name.push_str("_input");
                }
            } else if !element.is_empty() {
                name.push('_');
                name.push_str(&clean(element));
            }
            let e = element.as_str();
            if e == "fault" || e == "alarm" {
                push(name, "gauge", &|| format!("Hardware sensor {e} status ({typ})"), v);
            } else if e == "beep" {
                push(name + "_enabled", "gauge", &|| "Hardware monitor sensor has beeping enabled".into(), v);
            } else if typ == "in" || typ == "cpu" {
                push(name + "_volts", "gauge", &|| format!("Hardware monitor for voltage ({e})"), v * 0.001);
            } else if typ == "temp" && e != "type" {
                let e = if e.is_empty() { "input" } else { e };
                push(name + "_celsius", "gauge", &|| format!("Hardware monitor for temperature ({e})"), v * 0.001);
            } else if typ == "curr" {
                push(name + "_amps", "gauge", &|| format!("Hardware monitor for current ({e})"), v * 0.001);
            } else if typ == "energy" {
                push(
                    name + "_joule_total",
                    "counter",
                    &|| format!("Hardware monitor for joules used so far ({e})"),
                    v / 1e6,
                );
            } else if typ == "power" && e == "accuracy" {
                push(name, "gauge", &|| "Hardware monitor power meter accuracy, as a ratio".into(), v / 1e6);
            } else if typ == "power"
                && matches!(e, "average_interval" | "average_interval_min" | "average_interval_max")
            {
                push(
                    name + "_seconds",
                    "gauge",
                    &|| format!("Hardware monitor power usage update interval ({e})"),
                    v * 0.001,
                );
            } else if typ == "power" {
                push(name + "_watt", "gauge", &|| format!("Hardware monitor for power usage in watts ({e})"), v / 1e6);
            } else if typ == "humidity" {
                push(
                    name,
                    "gauge",
                    &|| {
                        format!(
                            "Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity as a percentage) ({e})"
                        )
                    },
                    v / 1e6,
                );
            } else if typ == "fan" && matches!(e, "input" | "min" | "max" | "target") {
                push(name + "_rpm", "gauge", &|| format!("Hardware monitor for fan revolutions per minute ({e})"), v);
            } else {
                push(name, "gauge", &|| format!("Hardware monitor {typ} element {e}"), v);
            }
        }
    }
}

/// Collects `node_thermal_zone_temp{zone,type}` (°C) from
/// `<sys>/class/thermal/thermal_zone<N>` and
/// `node_cooling_device_{cur,max}_state{name,type}` from
/// `cooling_device<N>`. A zone whose `type` or `temp` cannot be read is
/// skipped; no `class/thermal` directory reports nothing.
pub(crate) fn collect_thermal(sys: &Path) -> Result<Vec<Metric>, String> {
    let base = sys.join("class/thermal");
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    let mut out = Vec::new();
    for n in &names {
        let dir = base.join(n);
        if let Some(zone) = n.strip_prefix("thermal_zone") {
            let (Some(typ), Some(temp)) =
                (read_attr(&dir.join("type")), read_attr(&dir.join("temp")).and_then(|t| t.trim().parse::<i64>().ok()))
            else {
                continue;
            };
            out.push(Metric {
                name: "node_thermal_zone_temp".into(),
                labels: vec![("type", typ), ("zone", zone.to_string())],
                value: temp as f64 / 1000.0,
            });
        } else if let Some(dev) = n.strip_prefix("cooling_device") {
            let Some(typ) = read_attr(&dir.join("type")) else { continue };
            let state = |f: &str| read_attr(&dir.join(f)).and_then(|v| v.trim().parse::<i64>().ok());
            let (Some(cur), Some(max)) = (state("cur_state"), state("max_state")) else { continue };
            for (name, v) in [("node_cooling_device_cur_state", cur), ("node_cooling_device_max_state", max)] {
                out.push(Metric {
                    name: name.into(),
                    labels: vec![("name", dev.to_string()), ("type", typ.clone())],
                    value: v as f64,
                });
            }
        }
    }
    Ok(out)
}

/// Type and help of the thermal families.
pub(crate) const THERMAL_METADATA: [(&str, &str, &str); 3] = [
    ("node_thermal_zone_temp", "gauge", "Zone temperature in Celsius"),
    ("node_cooling_device_cur_state", "gauge", "Current throttle state of the cooling device"),
    ("node_cooling_device_max_state", "gauge", "Maximum throttle state of the cooling device"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explode_matches_node_exporter() {
        assert_eq!(explode("temp1_input"), Some(("temp", 1, "input")));
        assert_eq!(explode("temp1_crit_alarm"), Some(("temp", 1, "crit_alarm")));
        assert_eq!(explode("in0_input"), Some(("in", 0, "input")));
        assert_eq!(explode("pwm1"), Some(("pwm", 1, "")));
        assert_eq!(explode("beep_enable"), Some(("beep_enable", 0, "")));
        assert_eq!(explode("update_interval"), Some(("update_interval", 0, "")));
        assert_eq!(explode("temp1_"), None);
        assert_eq!(explode("temp1x"), None);
        assert_eq!(explode("1temp"), None);
        assert_eq!(explode(""), None);
        assert_eq!(explode("temp99999999999999999999_input"), None);
        assert_eq!(clean("  Core 0 "), "core_0");
        assert_eq!(clean("Package id 0"), "package_id_0");
        assert_eq!(clean("coretemp\n"), "coretemp");
    }

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn hwmon_tree() {
        let sys = tempfile::tempdir().unwrap();
        // hwmon0: a coretemp chip behind a platform device.
        let dev = sys.path().join("devices/platform/coretemp.0");
        std::fs::create_dir_all(&dev).unwrap();
        let h0 = sys.path().join("class/hwmon/hwmon0");
        std::fs::create_dir_all(&h0).unwrap();
        std::os::unix::fs::symlink(&dev, h0.join("device")).unwrap();
        write(&h0.join("name"), "coretemp\n");
        write(&h0.join("temp1_input"), "45000\n");
        write(&h0.join("temp1_crit"), "100000\n");
        write(&h0.join("temp1_crit_alarm"), "0\n");
        write(&h0.join("temp1_label"), "Package id 0\n");
        write(&h0.join("uevent"), "x\n");
        write(&dev.join("temp2_input"), "41000\n");
        write(&dev.join("temp2_label"), "Core 0\n");
        // hwmon1: no device link, only a name; a fan, a voltage and garbage.
        let h1 = sys.path().join("class/hwmon/hwmon1");
        write(&h1.join("name"), "nct6775\n");
        write(&h1.join("fan1_input"), "1200\n");
        write(&h1.join("in0_input"), "1056\n");
        write(&h1.join("power1_average"), "12500000\n");
        write(&h1.join("energy1_input"), "3000000\n");
        write(&h1.join("fan2_input"), "not a number\n");
        write(&h1.join("pwm1"), "128\n");

        let mut dynamic = Dynamic::default();
        let out = collect_hwmon(sys.path(), &mut dynamic).unwrap();
        let get = |name: &str, chip: &str, sensor: &str| {
            out.iter()
                .find(|m| m.name == name && m.labels[0].1 == chip && m.labels.iter().any(|l| l.1 == sensor))
                .map(|m| m.value)
        };
        assert_eq!(get("node_hwmon_temp_celsius", "platform_coretemp_0", "temp1"), Some(45.0));
        assert_eq!(get("node_hwmon_temp_crit_celsius", "platform_coretemp_0", "temp1"), Some(100.0));
        assert_eq!(get("node_hwmon_temp_crit_alarm_celsius", "platform_coretemp_0", "temp1"), Some(0.0));
        assert_eq!(get("node_hwmon_temp_celsius", "platform_coretemp_0", "temp2"), Some(41.0));
        assert_eq!(get("node_hwmon_sensor_label", "platform_coretemp_0", "core_0"), Some(1.0));
        assert_eq!(get("node_hwmon_chip_names", "platform_coretemp_0", "coretemp"), Some(1.0));
        assert_eq!(get("node_hwmon_fan_rpm", "nct6775", "fan1"), Some(1200.0));
        assert_eq!(get("node_hwmon_in_volts", "nct6775", "in0"), Some(1.056));
        assert_eq!(get("node_hwmon_power_average_watt", "nct6775", "power1"), Some(12.5));
        assert_eq!(get("node_hwmon_energy_joule_total", "nct6775", "energy1"), Some(3.0));
        assert_eq!(get("node_hwmon_pwm", "nct6775", "pwm1"), Some(128.0));
        assert!(!out.iter().any(|m| m.labels.iter().any(|l| l.1 == "fan2")));
        assert_eq!(dynamic.get("node_hwmon_temp_celsius"), Some(("gauge", "Hardware monitor for temperature (input)")));
        assert_eq!(dynamic.get("node_hwmon_energy_joule_total").map(|m| m.0), Some("counter"));
        assert_eq!(dynamic.get("node_hwmon_pwm"), Some(("gauge", "Hardware monitor pwm element ")));
        // One series per family and label set.
        let mut keys: Vec<_> = out.iter().map(|m| (m.name.clone(), m.labels.clone())).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), out.len());

        // Nothing there: nothing reported, no error.
        let empty = tempfile::tempdir().unwrap();
        assert!(collect_hwmon(empty.path(), &mut dynamic).unwrap().is_empty());
        assert!(collect_thermal(empty.path()).unwrap().is_empty());
    }

    #[test]
    fn thermal_tree() {
        let sys = tempfile::tempdir().unwrap();
        let t = sys.path().join("class/thermal");
        write(&t.join("thermal_zone0/type"), "x86_pkg_temp\n");
        write(&t.join("thermal_zone0/temp"), "52000\n");
        write(&t.join("thermal_zone1/type"), "acpitz\n");
        write(&t.join("thermal_zone1/temp"), "garbage\n");
        write(&t.join("cooling_device0/type"), "Processor\n");
        write(&t.join("cooling_device0/cur_state"), "0\n");
        write(&t.join("cooling_device0/max_state"), "10\n");
        let out = collect_thermal(sys.path()).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        // Directory order: cooling_device0 before thermal_zone0.
        assert_eq!(out[1].name, "node_cooling_device_max_state");
        assert_eq!(out[1].labels, vec![("name", "0".to_string()), ("type", "Processor".to_string())]);
        assert_eq!(out[1].value, 10.0);
        assert_eq!(out[2].name, "node_thermal_zone_temp");
        assert_eq!(out[2].labels, vec![("type", "x86_pkg_temp".to_string()), ("zone", "0".to_string())]);
        assert_eq!(out[2].value, 52.0);
    }
}
