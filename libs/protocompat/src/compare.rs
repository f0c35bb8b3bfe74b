//! What counts as breaking: a released descriptor set (old) against the current one (new).
//!
//! Elements are matched by fully qualified name, package by package of the old set. Only what the
//! old set published is checked, so anything added is never a finding. A removed field or enum
//! value is retired correctly when both its number and its name are `reserved`; a reservation,
//! once published, must stay (otherwise the next release could reuse the number and nothing
//! would compare it with the field that had it). A whole package `foo.vN` may disappear only when
//! the new set has `foo.vM` with M > N: that is how a contract is replaced.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};

/// The kinds of breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A package is gone and no higher major version of it exists.
    PackageRemoved,
    MessageRemoved,
    /// A field is gone and its number and name are not both reserved.
    FieldRemoved,
    /// A field keeps its name but has another number.
    FieldRenumbered,
    /// A field's number now belongs to a field with another name.
    FieldNumberReused,
    /// Scalar type, message or enum type name, or map key/value type changed.
    FieldTypeChanged,
    /// Singular, `optional` (explicit presence), `required` or `repeated` changed.
    FieldLabelChanged,
    /// A field moved into, out of, or between oneofs.
    FieldOneofChanged,
    EnumRemoved,
    /// An enum value's name is gone and its number and name are not both reserved.
    EnumValueRemoved,
    /// An enum value keeps its name but has another number.
    EnumValueRenumbered,
    ServiceRemoved,
    RpcRemoved,
    RpcInputChanged,
    RpcOutputChanged,
    /// Client or server streaming turned on or off.
    RpcStreamingChanged,
    /// A reserved number or name of a message or enum is no longer reserved.
    ReservationRemoved,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::PackageRemoved,
        Kind::MessageRemoved,
        Kind::FieldRemoved,
        Kind::FieldRenumbered,
        Kind::FieldNumberReused,
        Kind::FieldTypeChanged,
        Kind::FieldLabelChanged,
        Kind::FieldOneofChanged,
        Kind::EnumRemoved,
        Kind::EnumValueRemoved,
        Kind::EnumValueRenumbered,
        Kind::ServiceRemoved,
        Kind::RpcRemoved,
        Kind::RpcInputChanged,
        Kind::RpcOutputChanged,
        Kind::RpcStreamingChanged,
        Kind::ReservationRemoved,
    ];

    /// A stable name for output and greps.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::PackageRemoved => "package-removed",
            Kind::MessageRemoved => "message-removed",
            Kind::FieldRemoved => "field-removed",
            Kind::FieldRenumbered => "field-renumbered",
            Kind::FieldNumberReused => "field-number-reused",
            Kind::FieldTypeChanged => "field-type-changed",
            Kind::FieldLabelChanged => "field-label-changed",
            Kind::FieldOneofChanged => "field-oneof-changed",
            Kind::EnumRemoved => "enum-removed",
            Kind::EnumValueRemoved => "enum-value-removed",
            Kind::EnumValueRenumbered => "enum-value-renumbered",
            Kind::ServiceRemoved => "service-removed",
            Kind::RpcRemoved => "rpc-removed",
            Kind::RpcInputChanged => "rpc-input-changed",
            Kind::RpcOutputChanged => "rpc-output-changed",
            Kind::RpcStreamingChanged => "rpc-streaming-changed",
            Kind::ReservationRemoved => "reservation-removed",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// The protobuf package of the old set it was found in, e.g. `keel.v1`.
    pub package: String,
    /// Fully qualified path of the element, without a leading dot: `keel.v1.GenerateRequest.seed`,
    /// `keel.v1.ErrorReason.NOT_FOUND`, `keel.v1.InferenceService.Generate`, or the package.
    pub path: String,
    /// What changed, for people.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.path, self.kind, self.message)
    }
}

/// Every breaking change from `old` (a released set) to `new` (the current one), in the order of
/// the old set's packages (sorted), then declarations. Empty means `new` can replace `old`.
pub fn compare(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Vec<Finding> {
    let old_packages = packages(old);
    let new_packages = packages(new);
    let mut cx = Cx::default();
    for (&package, old_files) in &old_packages {
        package.clone_into(&mut cx.package);
        match new_packages.get(package) {
            Some(new_files) => compare_package(&mut cx, old_files, new_files),
            None => match major(package) {
                Some((prefix, n)) => {
                    let replaced = new_packages
                        .keys()
                        .any(|p| major(p).is_some_and(|(q, m)| q == prefix && m > n));
                    if !replaced {
                        cx.push(
                            Kind::PackageRemoved,
                            package,
                            format!(
                                "package `{package}` was removed and no higher major version \
                                 of it (e.g. `{}`) replaces it",
                                join(prefix, &format!("v{}", n.saturating_add(1)))
                            ),
                        );
                    }
                }
                None => cx.push(
                    Kind::PackageRemoved,
                    package,
                    format!("package `{package}` was removed"),
                ),
            },
        }
    }
    cx.findings
}

/// `foo.bar.v2` → `("foo.bar", 2)`; `None` when the last component is not `v<digits>`.
fn major(package: &str) -> Option<(&str, u64)> {
    let (prefix, last) = package.rsplit_once('.').unwrap_or(("", package));
    let digits = last.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

fn packages(set: &FileDescriptorSet) -> BTreeMap<&str, Vec<&FileDescriptorProto>> {
    let mut out: BTreeMap<&str, Vec<&FileDescriptorProto>> = BTreeMap::new();
    for file in &set.file {
        out.entry(file.package()).or_default().push(file);
    }
    out
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

#[derive(Default)]
struct Cx {
    package: String,
    findings: Vec<Finding>,
}

impl Cx {
    fn push(&mut self, kind: Kind, path: &str, message: String) {
        self.findings.push(Finding {
            kind,
            package: self.package.clone(),
            path: path.to_owned(),
            message,
        });
    }
}

/// A message and whether its file is proto3 (where a plain singular field has no presence).
#[derive(Clone, Copy)]
struct Msg<'a> {
    d: &'a DescriptorProto,
    proto3: bool,
}

fn compare_package(cx: &mut Cx, old: &[&FileDescriptorProto], new: &[&FileDescriptorProto]) {
    let scope = cx.package.clone();
    let proto3 = |f: &FileDescriptorProto| f.syntax() == "proto3";

    let old_messages = old.iter().flat_map(|f| {
        f.message_type.iter().map(|d| Msg {
            d,
            proto3: proto3(f),
        })
    });
    let new_messages = new
        .iter()
        .flat_map(|f| {
            f.message_type.iter().map(|d| Msg {
                d,
                proto3: proto3(f),
            })
        })
        .map(|m| (m.d.name(), m))
        .collect();
    compare_messages(cx, &scope, old_messages, &new_messages);

    let old_enums = old.iter().flat_map(|f| f.enum_type.iter());
    let new_enums = new.iter().flat_map(|f| f.enum_type.iter());
    compare_enums(cx, &scope, old_enums, new_enums);

    let new_services: HashMap<&str, &ServiceDescriptorProto> = new
        .iter()
        .flat_map(|f| f.service.iter())
        .map(|s| (s.name(), s))
        .collect();
    for service in old.iter().flat_map(|f| f.service.iter()) {
        let path = join(&scope, service.name());
        match new_services.get(service.name()) {
            Some(now) => compare_service(cx, &path, service, now),
            None => cx.push(
                Kind::ServiceRemoved,
                &path,
                format!("service `{}` was removed", service.name()),
            ),
        }
    }
}

fn is_map_entry(d: &DescriptorProto) -> bool {
    d.options.as_ref().is_some_and(|o| o.map_entry())
}

fn compare_messages<'a>(
    cx: &mut Cx,
    scope: &str,
    old: impl Iterator<Item = Msg<'a>>,
    new: &HashMap<&str, Msg<'a>>,
) {
    for o in old.filter(|m| !is_map_entry(m.d)) {
        let path = join(scope, o.d.name());
        match new.get(o.d.name()) {
            Some(&n) => compare_message(cx, &path, o, n),
            None => cx.push(
                Kind::MessageRemoved,
                &path,
                format!("message `{}` was removed", o.d.name()),
            ),
        }
    }
}

fn compare_message(cx: &mut Cx, path: &str, old: Msg<'_>, new: Msg<'_>) {
    let new_ranges = new.d.reserved_range_pairs();
    compare_reservations(
        cx,
        path,
        (&old.d.reserved_range_pairs(), &old.d.reserved_name),
        (&new_ranges, &new.d.reserved_name),
    );

    fn entries<'a>(path: &str, m: Msg<'a>) -> HashMap<String, &'a DescriptorProto> {
        m.d.nested_type
            .iter()
            .filter(|d| is_map_entry(d))
            .map(|d| (format!(".{path}.{}", d.name()), d))
            .collect()
    }
    let (old_entries, new_entries) = (entries(path, old), entries(path, new));
    let by_name: HashMap<&str, &FieldDescriptorProto> =
        new.d.field.iter().map(|f| (f.name(), f)).collect();
    let by_number: HashMap<i32, &FieldDescriptorProto> =
        new.d.field.iter().map(|f| (f.number(), f)).collect();

    for field in &old.d.field {
        let field_path = join(path, field.name());
        let (name, number) = (field.name(), field.number());
        let reused = by_number.get(&number).filter(|n| n.name() != name);
        if let Some(now) = reused {
            cx.push(
                Kind::FieldNumberReused,
                &field_path,
                format!(
                    "number {number} was field `{name}` and is now field `{}`",
                    now.name()
                ),
            );
        }
        let Some(&now) = by_name.get(name) else {
            if reused.is_none() {
                let number_reserved = reserves(&new_ranges, number);
                let name_reserved = new.d.reserved_name.iter().any(|r| r == name);
                if !(number_reserved && name_reserved) {
                    cx.push(
                        Kind::FieldRemoved,
                        &field_path,
                        format!(
                            "field `{name}` = {number} was removed{}",
                            retire_hint(number_reserved, name_reserved)
                        ),
                    );
                }
            }
            continue;
        };
        if now.number() != number {
            cx.push(
                Kind::FieldRenumbered,
                &field_path,
                format!(
                    "field `{name}` moved from number {number} to {}",
                    now.number()
                ),
            );
        }
        let (was, is) = (type_of(field, &old_entries), type_of(now, &new_entries));
        if was != is {
            cx.push(
                Kind::FieldTypeChanged,
                &field_path,
                format!("field `{name}` changed type from {was} to {is}"),
            );
        }
        let (was, is) = (cardinality(field, old.proto3), cardinality(now, new.proto3));
        if was != is {
            cx.push(
                Kind::FieldLabelChanged,
                &field_path,
                format!("field `{name}` changed from {was} to {is}"),
            );
        }
        let (was, is) = (oneof_of(old.d, field), oneof_of(new.d, now));
        if was != is {
            let message = match (was, is) {
                (None, Some(b)) => format!("field `{name}` moved into oneof `{b}`"),
                (Some(a), None) => format!("field `{name}` moved out of oneof `{a}`"),
                (a, b) => format!(
                    "field `{name}` moved from oneof `{}` to oneof `{}`",
                    a.unwrap_or_default(),
                    b.unwrap_or_default()
                ),
            };
            cx.push(Kind::FieldOneofChanged, &field_path, message);
        }
    }

    let nested = new
        .d
        .nested_type
        .iter()
        .map(|d| {
            (
                d.name(),
                Msg {
                    d,
                    proto3: new.proto3,
                },
            )
        })
        .collect();
    let old_nested = old.d.nested_type.iter().map(|d| Msg {
        d,
        proto3: old.proto3,
    });
    compare_messages(cx, path, old_nested, &nested);
    compare_enums(cx, path, old.d.enum_type.iter(), new.d.enum_type.iter());
}

trait ReservedPairs {
    /// Reserved numbers as half-open `[start, end)` ranges.
    fn reserved_range_pairs(&self) -> Vec<(i64, i64)>;
}

impl ReservedPairs for DescriptorProto {
    fn reserved_range_pairs(&self) -> Vec<(i64, i64)> {
        self.reserved_range
            .iter()
            .map(|r| (i64::from(r.start()), i64::from(r.end())))
            .collect()
    }
}

impl ReservedPairs for EnumDescriptorProto {
    /// Enum reserved ranges are inclusive on the wire; normalised to half-open here.
    fn reserved_range_pairs(&self) -> Vec<(i64, i64)> {
        self.reserved_range
            .iter()
            .map(|r| (i64::from(r.start()), i64::from(r.end()) + 1))
            .collect()
    }
}

fn reserves(ranges: &[(i64, i64)], number: i32) -> bool {
    let n = i64::from(number);
    ranges.iter().any(|&(start, end)| start <= n && n < end)
}

/// Whether the union of `ranges` covers all of `[start, end)`.
fn covers(ranges: &[(i64, i64)], (start, end): (i64, i64)) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut reached = start;
    for (s, e) in sorted {
        if reached >= end || s > reached {
            break;
        }
        reached = reached.max(e);
    }
    reached >= end
}

fn compare_reservations(
    cx: &mut Cx,
    path: &str,
    (old_ranges, old_names): (&[(i64, i64)], &[String]),
    (new_ranges, new_names): (&[(i64, i64)], &[String]),
) {
    for &(start, end) in old_ranges {
        if !covers(new_ranges, (start, end)) {
            let what = if end - start == 1 {
                format!("number {start}")
            } else {
                format!("numbers {start} to {}", end - 1)
            };
            cx.push(
                Kind::ReservationRemoved,
                path,
                format!("reserved {what} of `{path}` is no longer reserved"),
            );
        }
    }
    for name in old_names {
        if !new_names.contains(name) {
            cx.push(
                Kind::ReservationRemoved,
                path,
                format!("reserved name `{name}` of `{path}` is no longer reserved"),
            );
        }
    }
}

fn retire_hint(number_reserved: bool, name_reserved: bool) -> &'static str {
    match (number_reserved, name_reserved) {
        (true, false) => "; its number is reserved but its name is not",
        (false, true) => "; its name is reserved but its number is not",
        _ => "; to retire it, reserve both its number and its name",
    }
}

/// The field's type as written in a .proto: `string`, `keel.v1.Usage`, `map<string, int64>`.
fn type_of(
    field: &FieldDescriptorProto,
    map_entries: &HashMap<String, &DescriptorProto>,
) -> String {
    let named = field.type_name.as_deref().filter(|n| !n.is_empty());
    if let Some(entry) = named.and_then(|n| map_entries.get(n)) {
        let part = |number| {
            entry
                .field
                .iter()
                .find(|f| f.number() == number)
                .map_or_else(|| "?".to_owned(), |f| type_of(f, &HashMap::new()))
        };
        return format!("map<{}, {}>", part(1), part(2));
    }
    let declared = field.r#type.map(|_| field.r#type());
    match (declared, named.map(|n| n.trim_start_matches('.'))) {
        (Some(Type::Group), Some(name)) => format!("group {name}"),
        (None | Some(Type::Message | Type::Enum), Some(name)) => name.to_owned(),
        _ => field
            .r#type()
            .as_str_name()
            .trim_start_matches("TYPE_")
            .to_ascii_lowercase(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cardinality {
    /// proto3 singular without `optional`.
    Singular,
    /// Explicit presence: proto3 `optional`, or a proto2 optional.
    Optional,
    Required,
    Repeated,
}

impl fmt::Display for Cardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cardinality::Singular => "singular",
            Cardinality::Optional => "optional",
            Cardinality::Required => "required",
            Cardinality::Repeated => "repeated",
        })
    }
}

fn cardinality(field: &FieldDescriptorProto, proto3: bool) -> Cardinality {
    match field.label() {
        Label::Repeated => Cardinality::Repeated,
        Label::Required => Cardinality::Required,
        Label::Optional if proto3 && !field.proto3_optional() => Cardinality::Singular,
        Label::Optional => Cardinality::Optional,
    }
}

/// The real oneof a field belongs to (the synthetic oneof of a proto3 `optional` is not one).
fn oneof_of<'a>(message: &'a DescriptorProto, field: &FieldDescriptorProto) -> Option<&'a str> {
    if field.proto3_optional() {
        return None;
    }
    let index = usize::try_from(field.oneof_index?).ok()?;
    message.oneof_decl.get(index).map(|o| o.name())
}

fn compare_enums<'a>(
    cx: &mut Cx,
    scope: &str,
    old: impl Iterator<Item = &'a EnumDescriptorProto>,
    new: impl Iterator<Item = &'a EnumDescriptorProto>,
) {
    let new: HashMap<&str, &EnumDescriptorProto> = new.map(|e| (e.name(), e)).collect();
    for o in old {
        let path = join(scope, o.name());
        match new.get(o.name()) {
            Some(n) => compare_enum(cx, &path, o, n),
            None => cx.push(
                Kind::EnumRemoved,
                &path,
                format!("enum `{}` was removed", o.name()),
            ),
        }
    }
}

fn compare_enum(cx: &mut Cx, path: &str, old: &EnumDescriptorProto, new: &EnumDescriptorProto) {
    let new_ranges = new.reserved_range_pairs();
    compare_reservations(
        cx,
        path,
        (&old.reserved_range_pairs(), &old.reserved_name),
        (&new_ranges, &new.reserved_name),
    );
    for value in &old.value {
        let (name, number) = (value.name(), value.number());
        let value_path = join(path, name);
        match new.value.iter().find(|v| v.name() == name) {
            Some(now) if now.number() != number => cx.push(
                Kind::EnumValueRenumbered,
                &value_path,
                format!(
                    "enum value `{name}` moved from number {number} to {}",
                    now.number()
                ),
            ),
            Some(_) => {}
            None => {
                let number_reserved = reserves(&new_ranges, number);
                let name_reserved = new.reserved_name.iter().any(|r| r == name);
                if number_reserved && name_reserved {
                    continue;
                }
                let message = match new.value.iter().find(|v| v.number() == number) {
                    Some(now) => format!(
                        "enum value `{name}` = {number} was removed (number {number} is now `{}`)",
                        now.name()
                    ),
                    None => format!(
                        "enum value `{name}` = {number} was removed{}",
                        retire_hint(number_reserved, name_reserved)
                    ),
                };
                cx.push(Kind::EnumValueRemoved, &value_path, message);
            }
        }
    }
}

fn compare_service(
    cx: &mut Cx,
    path: &str,
    old: &ServiceDescriptorProto,
    new: &ServiceDescriptorProto,
) {
    let type_name = |t: &str| t.trim_start_matches('.').to_owned();
    let streaming = |on: bool| if on { "streaming" } else { "unary" };
    for rpc in &old.method {
        let name = rpc.name();
        let rpc_path = join(path, name);
        let Some(now) = new.method.iter().find(|m| m.name() == name) else {
            cx.push(
                Kind::RpcRemoved,
                &rpc_path,
                format!("rpc `{name}` was removed"),
            );
            continue;
        };
        if rpc.input_type() != now.input_type() {
            cx.push(
                Kind::RpcInputChanged,
                &rpc_path,
                format!(
                    "rpc `{name}` request changed from {} to {}",
                    type_name(rpc.input_type()),
                    type_name(now.input_type())
                ),
            );
        }
        if rpc.output_type() != now.output_type() {
            cx.push(
                Kind::RpcOutputChanged,
                &rpc_path,
                format!(
                    "rpc `{name}` response changed from {} to {}",
                    type_name(rpc.output_type()),
                    type_name(now.output_type())
                ),
            );
        }
        for (side, was, is) in [
            ("request", rpc.client_streaming(), now.client_streaming()),
            ("response", rpc.server_streaming(), now.server_streaming()),
        ] {
            if was != is {
                cx.push(
                    Kind::RpcStreamingChanged,
                    &rpc_path,
                    format!(
                        "rpc `{name}` {side} changed from {} to {}",
                        streaming(was),
                        streaming(is)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
