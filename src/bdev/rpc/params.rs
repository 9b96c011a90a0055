//! Decoding of RPC parameters (DESIGN.md's table): every key checked against the method's list
//! and the tunables table, every value against its type and range, before anything changes.
//! Every error names the bad parameter and its allowed range.

use crate::bdev::error::Error;
use crate::bdev::registry::Config;
use crate::engine::config::TUNABLES;
use crate::engine::Options;
use crate::format::{SEGMENT_SIZE_KIB_MAX, SEGMENT_SIZE_KIB_MIN};
use serde_json::{Map, Value};

pub type Params = Map<String, Value>;

fn invalid(msg: String) -> Error {
    Error::InvalidParams(msg)
}

/// The params object (`Null`, absent params, is an empty object).
pub fn object(v: Result<Value, String>) -> Result<Params, Error> {
    match v.map_err(invalid)? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(invalid("parameters must be a JSON object".into())),
    }
}

fn known_list(fixed: &[&str], with_tunables: bool) -> String {
    let mut v: Vec<&str> = fixed.to_vec();
    if with_tunables {
        v.extend(TUNABLES.iter().map(|t| t.name));
    }
    v.join(", ")
}

/// Refuses a key that is neither in `fixed` nor (`with_tunables`) a tunable.
pub fn check_keys(p: &Params, fixed: &[&str], with_tunables: bool) -> Result<(), Error> {
    for k in p.keys() {
        let ok =
            fixed.contains(&k.as_str()) || (with_tunables && TUNABLES.iter().any(|t| t.name == k));
        if !ok {
            return Err(invalid(format!(
                "unknown parameter '{k}'; known parameters: {}",
                known_list(fixed, with_tunables)
            )));
        }
    }
    Ok(())
}

pub fn req_str(p: &Params, key: &str) -> Result<String, Error> {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(invalid(format!(
            "parameter '{key}' must be a non-empty string"
        ))),
        None => Err(invalid(format!("missing required parameter '{key}'"))),
    }
}

pub fn opt_str(p: &Params, key: &str) -> Result<Option<String>, Error> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_str(p, key).map(Some),
    }
}

pub fn opt_bool(p: &Params, key: &str) -> Result<bool, Error> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("parameter '{key}' must be true or false"))),
    }
}

pub fn opt_segment_size(p: &Params) -> Result<Option<u32>, Error> {
    let range = || {
        format!(
            "parameter 'segment_size_kib' must be a power of two in {SEGMENT_SIZE_KIB_MIN}..={SEGMENT_SIZE_KIB_MAX}"
        )
    };
    match p.get("segment_size_kib") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let k = v.as_u64().ok_or_else(|| invalid(range()))?;
            if !(SEGMENT_SIZE_KIB_MIN as u64..=SEGMENT_SIZE_KIB_MAX as u64).contains(&k)
                || !k.is_power_of_two()
            {
                return Err(invalid(format!("{} (got {k})", range())));
            }
            Ok(Some(k as u32))
        }
    }
}

/// Applies every tunable present in `p` to `opts`, validating type, range and (unless
/// `at_create`) that it is dynamic. Returns the keys and values set.
pub fn apply_tunables(
    p: &Params,
    opts: &mut Options,
    at_create: bool,
) -> Result<Vec<(String, u64)>, Error> {
    let mut set = Vec::new();
    for t in TUNABLES {
        let Some(v) = p.get(t.name) else { continue };
        // A JSON boolean only for flags (range 0..=1): `true` is no number of seconds or %.
        let flag = t.min == 0 && t.max == 1;
        let value = match v {
            Value::Bool(b) if flag => *b as u64,
            Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
            _ => {
                let kind = if flag {
                    "true, false, 0 or 1"
                } else {
                    "an integer"
                };
                return Err(invalid(format!(
                    "option '{}' must be {kind} in {}..={} (got {v})",
                    t.name, t.min, t.max
                )));
            }
        };
        opts.set(t.name, value, at_create)?;
        set.push((t.name.to_string(), value));
    }
    Ok(set)
}

const CREATE_KEYS: &[&str] = &[
    "name",
    "cache_bdev",
    "backing_bdev",
    "force_format",
    "segment_size_kib",
    "cpumask",
];

/// `bdev_writeboost_create`'s parameters.
pub fn create(p: &Params) -> Result<Config, Error> {
    check_keys(p, CREATE_KEYS, true)?;
    let name = req_str(p, "name")?;
    let cache_bdev = req_str(p, "cache_bdev")?;
    let backing_bdev = req_str(p, "backing_bdev")?;
    let force_format = opt_bool(p, "force_format")?;
    let segment_size_kib = opt_segment_size(p)?;
    let cpumask = match p.get("cpumask") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            crate::bdev::cpumask::parse(m).map_err(invalid)?;
            Some(m.clone())
        }
        Some(v) => {
            return Err(invalid(format!(
                "parameter 'cpumask' must be a string (an SPDK cpumask such as \"0x1\" or \"[0,1]\"; the application's core mask is {}), got {v}",
                crate::bdev::cpumask::app_core_mask().to_hex()
            )))
        }
    };
    let mut options = Options::default();
    apply_tunables(p, &mut options, true)?;
    if cache_bdev == backing_bdev {
        return Err(invalid(format!(
            "cache_bdev and backing_bdev are the same bdev '{cache_bdev}'"
        )));
    }
    if name == cache_bdev || name == backing_bdev {
        return Err(invalid(format!(
            "name '{name}' must differ from the base bdevs"
        )));
    }
    Ok(Config {
        name,
        cache_bdev,
        backing_bdev,
        options,
        segment_size_kib,
        cpumask,
        force_format,
    })
}

/// `bdev_writeboost_set_options`'s parameters: the name, and how to apply the options (after
/// the volume's configured ones are known: an unknown volume is reported first).
pub fn set_options(p: &Params) -> Result<String, Error> {
    if p.contains_key("cpumask") {
        return Err(invalid(
            "parameter 'cpumask' can only be set at create (delete the volume and create it again with the new cpumask)".into(),
        ));
    }
    check_keys(p, &["name"], true)?;
    req_str(p, "name")
}

/// The dynamic tunables of `p` applied to `opts`; at least one must be given.
pub fn dynamic_tunables(p: &Params, opts: &mut Options) -> Result<Vec<(String, u64)>, Error> {
    let set = apply_tunables(p, opts, false)?;
    if set.is_empty() {
        let dynamic: Vec<&str> = TUNABLES
            .iter()
            .filter(|t| t.dynamic)
            .map(|t| t.name)
            .collect();
        return Err(invalid(format!(
            "no option given; dynamic options: {}",
            dynamic.join(", ")
        )));
    }
    Ok(set)
}
