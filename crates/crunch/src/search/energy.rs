//! Energy and CO2 of a piece of work on this machine.
//!
//! Energy is read from the RAPL package counters (`/sys/class/powercap/intel-rapl:N/energy_uj`,
//! which Linux also exposes for AMD's RAPL-compatible counters) when they are readable, and
//! otherwise modelled from the CPU time the process used: `joules = busy core-seconds × W`, where
//! `W` is the power of one busy logical CPU, from `--cpu-watts` or from a table of representative
//! parts (TDP divided by hardware threads), with a documented default. Both are recorded with
//! their source, so a report can say "modelled" when no counter was read. When RAPL is readable
//! the model's estimate is kept beside the reading, so the two can be compared.
//!
//! CO2 is `kWh × grid intensity` (grams per kWh): `--grid-intensity G`, a country code from
//! [`COUNTRY_INTENSITY`], or the world average [`WORLD_G_PER_KWH`].

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// World-average carbon intensity of electricity, grams CO2 per kWh (Ember, Global Electricity
/// Review 2024: 2023 average, 480 g/kWh).
pub const WORLD_G_PER_KWH: f64 = 480.0;

/// Approximate 2023 annual carbon intensities of electricity by country (ISO 3166 alpha-2),
/// grams CO2 per kWh, rounded (Ember's yearly country data). Override with `--grid-intensity`.
pub const COUNTRY_INTENSITY: &[(&str, f64)] = &[
    ("AU", 550.0),
    ("BR", 100.0),
    ("CA", 170.0),
    ("CN", 580.0),
    ("DE", 380.0),
    ("ES", 170.0),
    ("FR", 55.0),
    ("GB", 240.0),
    ("IN", 710.0),
    ("IT", 330.0),
    ("JP", 480.0),
    ("KR", 430.0),
    ("NL", 270.0),
    ("NO", 30.0),
    ("PL", 660.0),
    ("SE", 40.0),
    ("US", 370.0),
    ("ZA", 710.0),
];

/// Watts of one busy logical CPU when nothing better is known: a 65 W desktop part with 16
/// hardware threads, rounded.
pub const DEFAULT_WATTS_PER_CPU: f64 = 4.0;

/// Watts per busy logical CPU of representative parts: the first entry whose key is contained in
/// `/proc/cpuinfo`'s model name wins (TDP / hardware threads of the part named).
pub const CPU_WATTS_TABLE: &[(&str, f64, &str)] = &[
    ("EPYC 9", 1.9, "AMD EPYC 9654: 360 W, 192 threads"),
    ("EPYC 7", 2.2, "AMD EPYC 7763: 280 W, 128 threads"),
    ("EPYC", 2.2, "AMD EPYC 7763: 280 W, 128 threads"),
    ("Xeon Platinum", 3.1, "Intel Xeon Platinum 8480+: 350 W, 112 threads"),
    ("Xeon Gold", 3.9, "Intel Xeon Gold 6448Y: 225 W, 64 threads"),
    ("Xeon", 3.5, "Intel Xeon (generic server part)"),
    ("Ryzen", 4.1, "AMD Ryzen 7 7700: 65 W, 16 threads"),
    ("Core(TM) i", 3.3, "Intel Core i7-12700: 65 W, 20 threads"),
    ("Apple", 2.0, "Apple M2: ~20 W, 8 cores"),
];

/// Where the power figure comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PowerModel {
    /// Watts of one busy logical CPU.
    pub watts_per_cpu: f64,
    /// How the figure was chosen (`--cpu-watts`, the table row, or the default).
    pub basis: String,
}

impl PowerModel {
    /// The model for this machine: `cpu_watts` (package watts with every logical CPU busy, as
    /// `--cpu-watts` gives it) over the logical CPUs, else the table, else the default.
    pub fn for_machine(cpu_watts: Option<f64>) -> PowerModel {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if let Some(w) = cpu_watts {
            return PowerModel { watts_per_cpu: w / n, basis: format!("--cpu-watts {w} over {n} logical CPUs") };
        }
        let name = cpu_model_name().unwrap_or_default();
        match CPU_WATTS_TABLE.iter().find(|(k, _, _)| name.contains(k)) {
            Some((_, w, why)) => {
                PowerModel { watts_per_cpu: *w, basis: format!("{w} W per busy logical CPU ({why}; CPU \"{name}\")") }
            }
            None => PowerModel {
                watts_per_cpu: DEFAULT_WATTS_PER_CPU,
                basis: format!("{DEFAULT_WATTS_PER_CPU} W per busy logical CPU (default; CPU \"{name}\")"),
            },
        }
    }

    /// Joules for `cpu_seconds` of busy logical-CPU time.
    pub fn joules(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * self.watts_per_cpu
    }
}

fn cpu_model_name() -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// CPU time (user + system) this process has used so far, in seconds.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux target crunch runs on (the kernel's USER_HZ).
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// The package energy counters (RAPL) readable on this machine.
#[derive(Clone, Debug)]
pub struct Rapl {
    zones: Vec<(PathBuf, u64)>,
}

impl Rapl {
    /// The top-level package zones under `/sys/class/powercap`, if every one is readable.
    pub fn open() -> Option<Rapl> {
        Self::open_at(Path::new("/sys/class/powercap"))
    }

    fn open_at(root: &Path) -> Option<Rapl> {
        let mut zones = Vec::new();
        for e in std::fs::read_dir(root).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Packages are `intel-rapl:N` (no second colon: `intel-rapl:N:M` are sub-zones).
            if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
                continue;
            }
            let energy = e.path().join("energy_uj");
            std::fs::read_to_string(&energy).ok()?.trim().parse::<u64>().ok()?;
            let max = std::fs::read_to_string(e.path().join("max_energy_range_uj"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            zones.push((energy, max));
        }
        (!zones.is_empty()).then_some(Rapl { zones })
    }

    fn read(&self) -> Option<Vec<u64>> {
        self.zones.iter().map(|(p, _)| std::fs::read_to_string(p).ok()?.trim().parse().ok()).collect()
    }

    /// Joules between two readings (a counter that wrapped counts its range once).
    fn joules(&self, a: &[u64], b: &[u64]) -> f64 {
        self.zones
            .iter()
            .zip(a.iter().zip(b))
            .map(|((_, max), (&x, &y))| if y >= x { y - x } else { max.saturating_sub(x) + y })
            .sum::<u64>() as f64
            / 1e6
    }
}

/// A measurement in progress: started before the work, finished after it.
pub struct Meter {
    t0: Instant,
    cpu0: Option<f64>,
    rapl: Option<(Rapl, Vec<u64>)>,
}

/// The energy of one piece of work.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Energy {
    pub joules: f64,
    /// `rapl` (package counters read) or `modelled` (CPU time × watts per CPU).
    pub source: String,
    /// The model's estimate, kept beside a RAPL reading to compare the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modelled_joules: Option<f64>,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl Meter {
    pub fn start() -> Meter {
        let rapl = Rapl::open().and_then(|r| {
            let v = r.read()?;
            Some((r, v))
        });
        Meter { t0: Instant::now(), cpu0: process_cpu_seconds(), rapl }
    }

    /// The energy since [`Meter::start`]: RAPL when it was readable at both ends, else the model.
    /// RAPL counts the whole package, other processes included; the model counts this process.
    pub fn finish(&self, model: &PowerModel) -> Energy {
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu = match (self.cpu0, process_cpu_seconds()) {
            (Some(a), Some(b)) => (b - a).max(0.0),
            _ => wall,
        };
        let modelled = model.joules(cpu);
        let measured = self.rapl.as_ref().and_then(|(r, a)| Some(r.joules(a, &r.read()?)));
        match measured {
            Some(j) => Energy {
                joules: j,
                source: "rapl".into(),
                modelled_joules: Some(modelled),
                cpu_seconds: cpu,
                wall_seconds: wall,
            },
            None => Energy {
                joules: modelled,
                source: "modelled".into(),
                modelled_joules: None,
                cpu_seconds: cpu,
                wall_seconds: wall,
            },
        }
    }
}

/// Grams of CO2 per kWh: a number, a country code, or `world`.
///
/// # Errors
/// An unknown country code or a number that is not positive, naming `--grid-intensity`.
pub fn parse_intensity(s: &str) -> Result<f64, String> {
    if let Ok(g) = s.parse::<f64>() {
        return if g.is_finite() && g >= 0.0 {
            Ok(g)
        } else {
            Err(format!("grid intensity {s}: must be grams CO2 per kWh, 0 or more"))
        };
    }
    if s.eq_ignore_ascii_case("world") {
        return Ok(WORLD_G_PER_KWH);
    }
    COUNTRY_INTENSITY.iter().find(|(c, _)| c.eq_ignore_ascii_case(s)).map(|(_, g)| *g).ok_or_else(|| {
        let known: Vec<&str> = COUNTRY_INTENSITY.iter().map(|(c, _)| *c).collect();
        format!("grid intensity {s:?}: not a number of g/kWh, `world`, or a known country ({})", known.join(", "))
    })
}

/// Grams of CO2 for `joules` at `g_per_kwh`.
pub fn co2_grams(joules: f64, g_per_kwh: f64) -> f64 {
    joules / 3.6e6 * g_per_kwh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_parsing() {
        assert_eq!(parse_intensity("120").unwrap(), 120.0);
        assert_eq!(parse_intensity("fr").unwrap(), 55.0);
        assert_eq!(parse_intensity("world").unwrap(), WORLD_G_PER_KWH);
        assert!(parse_intensity("-3").unwrap_err().contains("0 or more"));
        assert!(parse_intensity("XX").unwrap_err().contains("known country"));
    }

    #[test]
    fn co2_of_a_kwh() {
        assert!((co2_grams(3.6e6, 480.0) - 480.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let m = Meter::start();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let e = m.finish(&PowerModel { watts_per_cpu: 10.0, basis: "test".into() });
        assert!(e.cpu_seconds > 0.1 && e.cpu_seconds < 1.0, "{e:?}");
        assert!(e.joules > 0.0);
        if e.source == "modelled" {
            assert!((e.joules - 10.0 * e.cpu_seconds).abs() < 1e-9);
        }
    }

    #[test]
    fn rapl_wraps_once() {
        let dir = std::env::temp_dir().join(format!("crunch-rapl-{}", std::process::id()));
        let z = dir.join("intel-rapl:0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::create_dir_all(dir.join("intel-rapl:0:0")).unwrap();
        std::fs::write(z.join("energy_uj"), "999000000\n").unwrap();
        std::fs::write(z.join("max_energy_range_uj"), "1000000000\n").unwrap();
        let r = Rapl::open_at(&dir).unwrap();
        assert_eq!(r.zones.len(), 1);
        let a = r.read().unwrap();
        std::fs::write(z.join("energy_uj"), "2000000\n").unwrap();
        let b = r.read().unwrap();
        assert!((r.joules(&a, &b) - 3.0).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
