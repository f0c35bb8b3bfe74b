//! One example per breaking kind and per allowed change, each compiled with protox from a small
//! .proto; and properties over generated descriptor sets.

use super::*;
use crate::compile_dir;
use crate::testdir::TestDir;

const HEADER: &str = "syntax = \"proto3\";\npackage t.v1;\n";

/// Compiles `files` (path, source) as one proto root.
fn compile(files: &[(&str, &str)]) -> FileDescriptorSet {
    let dir = TestDir::new();
    for (path, source) in files {
        dir.write(path, source);
    }
    compile_dir(dir.path()).unwrap()
}

/// Compiles one proto3 file of package `t.v1` whose body is `body`.
fn t_v1(body: &str) -> FileDescriptorSet {
    compile(&[("t/v1/t.proto", &format!("{HEADER}{body}"))])
}

fn diff(old: &str, new: &str) -> Vec<Finding> {
    compare(&t_v1(old), &t_v1(new))
}

/// Asserts that going from `old` to `new` gives exactly one finding, of `kind` at `path`.
#[track_caller]
fn breaks(old: &str, new: &str, kind: Kind, path: &str) -> Finding {
    let findings = diff(old, new);
    assert_eq!(findings.len(), 1, "expected one {kind}, got {findings:#?}");
    let finding = findings.into_iter().next().unwrap();
    assert_eq!(finding.kind, kind, "{finding:#?}");
    assert_eq!(finding.path, path, "{finding:#?}");
    assert_eq!(finding.package, "t.v1");
    assert!(!finding.message.is_empty());
    finding
}

#[track_caller]
fn allowed(old: &str, new: &str) {
    let findings = diff(old, new);
    assert_eq!(findings, [], "expected no findings");
}

// ---- packages and the major version rule ----

#[test]
fn removing_a_package_without_a_higher_major_breaks() {
    let old = compile(&[
        (
            "t/v1/t.proto",
            "syntax = \"proto3\";\npackage t.v1;\nmessage M {}\n",
        ),
        (
            "u/v1/u.proto",
            "syntax = \"proto3\";\npackage u.v1;\nmessage U {}\n",
        ),
    ]);
    let new = compile(&[(
        "u/v1/u.proto",
        "syntax = \"proto3\";\npackage u.v1;\nmessage U {}\n",
    )]);
    let findings = compare(&old, &new);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, Kind::PackageRemoved);
    assert_eq!(findings[0].path, "t.v1");
    assert_eq!(findings[0].package, "t.v1");
    assert!(findings[0].message.contains("`t.v2`"), "{}", findings[0]);
}

#[test]
fn removing_a_package_is_allowed_once_a_higher_major_exists() {
    let old = compile(&[(
        "t/v1/t.proto",
        "syntax = \"proto3\";\npackage t.v1;\nmessage M { string a = 1; }\n",
    )]);
    let new = compile(&[(
        "t/v3/t.proto",
        "syntax = \"proto3\";\npackage t.v3;\nmessage M { int64 a = 7; }\n",
    )]);
    assert_eq!(compare(&old, &new), []);
}

#[test]
fn a_higher_major_of_another_prefix_or_a_lower_major_does_not_excuse_a_removal() {
    let v2 = compile(&[(
        "a/t/v2/t.proto",
        "syntax = \"proto3\";\npackage a.t.v2;\nmessage M {}\n",
    )]);
    let new = compile(&[
        (
            "b/t/v3/t.proto",
            "syntax = \"proto3\";\npackage b.t.v3;\nmessage M {}\n",
        ),
        (
            "t/v9/t.proto",
            "syntax = \"proto3\";\npackage t.v9;\nmessage M {}\n",
        ),
        (
            "a/t/v1/t.proto",
            "syntax = \"proto3\";\npackage a.t.v1;\nmessage M {}\n",
        ),
    ]);
    let findings = compare(&v2, &new);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, Kind::PackageRemoved);
    assert_eq!(findings[0].path, "a.t.v2");
}

#[test]
fn a_removed_package_without_a_major_version_breaks() {
    let old = compile(&[(
        "t/t.proto",
        "syntax = \"proto3\";\npackage t.beta;\nmessage M {}\n",
    )]);
    let new = compile(&[(
        "t/v2/t.proto",
        "syntax = \"proto3\";\npackage t.v2;\nmessage M {}\n",
    )]);
    let findings = compare(&old, &new);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, Kind::PackageRemoved);
}

#[test]
fn dropping_elements_of_a_package_that_still_exists_breaks_even_with_a_higher_major() {
    let old = t_v1("message M {}\nmessage N {}\n");
    let mut new = t_v1("message M {}\n");
    new.file
        .extend(compile(&[("t/v2/t.proto", "syntax = \"proto3\";\npackage t.v2;\n")]).file);
    let findings = compare(&old, &new);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, Kind::MessageRemoved);
}

#[test]
fn majors_are_the_trailing_v_number() {
    assert_eq!(major("keel.v1"), Some(("keel", 1)));
    assert_eq!(major("keel.auth.v12"), Some(("keel.auth", 12)));
    assert_eq!(major("v2"), Some(("", 2)));
    assert_eq!(major("keel.v1beta1"), None);
    assert_eq!(major("keel.v"), None);
    assert_eq!(major("keel"), None);
    assert_eq!(major(""), None);
}

// ---- messages and fields ----

#[test]
fn removing_a_message_breaks() {
    breaks(
        "message A {}\nmessage B {}\n",
        "message A {}\n",
        Kind::MessageRemoved,
        "t.v1.B",
    );
}

#[test]
fn removing_a_nested_message_breaks_once_for_the_outermost_removed() {
    breaks(
        "message A { message B { message C {} } }\n",
        "message A {}\n",
        Kind::MessageRemoved,
        "t.v1.A.B",
    );
}

#[test]
fn removing_a_field_breaks() {
    let finding = breaks(
        "message M { string a = 1; string b = 2; }\n",
        "message M { string a = 1; }\n",
        Kind::FieldRemoved,
        "t.v1.M.b",
    );
    assert!(finding.message.contains("reserve"), "{finding}");
}

#[test]
fn removing_a_field_and_reserving_its_number_and_name_is_allowed() {
    allowed(
        "message M { string a = 1; string b = 2; }\n",
        "message M { string a = 1; reserved 2; reserved \"b\"; }\n",
    );
    allowed(
        "message M { string a = 1; string b = 5; }\n",
        "message M { string a = 1; reserved 3 to 9; reserved \"b\", \"z\"; }\n",
    );
}

#[test]
fn reserving_only_the_number_or_only_the_name_of_a_removed_field_still_breaks() {
    let finding = breaks(
        "message M { string a = 1; string b = 2; }\n",
        "message M { string a = 1; reserved 2; }\n",
        Kind::FieldRemoved,
        "t.v1.M.b",
    );
    assert!(finding.message.contains("name is not"), "{finding}");
    breaks(
        "message M { string a = 1; string b = 2; }\n",
        "message M { string a = 1; reserved \"b\"; }\n",
        Kind::FieldRemoved,
        "t.v1.M.b",
    );
}

#[test]
fn renumbering_a_field_breaks() {
    breaks(
        "message M { string a = 1; }\n",
        "message M { string a = 2; }\n",
        Kind::FieldRenumbered,
        "t.v1.M.a",
    );
}

#[test]
fn reusing_a_field_number_under_another_name_breaks() {
    breaks(
        "message M { string a = 1; }\n",
        "message M { string b = 1; }\n",
        Kind::FieldNumberReused,
        "t.v1.M.a",
    );
}

#[test]
fn renumbering_a_field_onto_a_number_now_taken_by_another_reports_both() {
    let findings = diff(
        "message M { string a = 1; }\n",
        "message M { string b = 1; string a = 2; }\n",
    );
    let kinds: Vec<_> = findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::FieldNumberReused, Kind::FieldRenumbered]);
}

#[test]
fn changing_a_scalar_type_breaks() {
    let finding = breaks(
        "message M { int32 a = 1; }\n",
        "message M { int64 a = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.a",
    );
    assert!(
        finding.message.contains("int32") && finding.message.contains("int64"),
        "{finding}"
    );
}

#[test]
fn changing_a_message_type_name_breaks() {
    let finding = breaks(
        "message A {}\nmessage B {}\nmessage M { A x = 1; }\n",
        "message A {}\nmessage B {}\nmessage M { B x = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.x",
    );
    assert!(finding.message.contains("t.v1.A"), "{finding}");
}

#[test]
fn changing_an_enum_type_name_breaks() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; }\nenum F { F_UNSPECIFIED = 0; }\nmessage M { E x = 1; }\n",
        "enum E { E_UNSPECIFIED = 0; }\nenum F { F_UNSPECIFIED = 0; }\nmessage M { F x = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.x",
    );
}

#[test]
fn changing_a_scalar_to_a_message_breaks() {
    breaks(
        "message A {}\nmessage M { string x = 1; }\n",
        "message A {}\nmessage M { A x = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.x",
    );
}

#[test]
fn changing_a_map_key_type_breaks() {
    let finding = breaks(
        "message M { map<string, int64> m = 1; }\n",
        "message M { map<int32, int64> m = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.m",
    );
    assert!(
        finding.message.contains("map<string, int64>")
            && finding.message.contains("map<int32, int64>"),
        "{finding}"
    );
}

#[test]
fn changing_a_map_value_type_breaks() {
    breaks(
        "message V {}\nmessage M { map<string, string> m = 1; }\n",
        "message V {}\nmessage M { map<string, V> m = 1; }\n",
        Kind::FieldTypeChanged,
        "t.v1.M.m",
    );
}

#[test]
fn a_map_that_keeps_its_key_and_value_types_is_unchanged() {
    allowed(
        "message M { map<string, string> m = 1; }\n",
        "message M {\n  // the labels\n  map<string, string> m = 1;\n}\n",
    );
}

#[test]
fn turning_a_map_into_a_repeated_message_breaks() {
    let findings = diff(
        "message M { map<string, string> m = 1; }\n",
        "message E { string key = 1; string value = 2; }\nmessage M { repeated E m = 1; }\n",
    );
    assert_eq!(
        findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
        [Kind::FieldTypeChanged]
    );
}

#[test]
fn making_a_singular_field_repeated_breaks() {
    breaks(
        "message M { string a = 1; }\n",
        "message M { repeated string a = 1; }\n",
        Kind::FieldLabelChanged,
        "t.v1.M.a",
    );
}

#[test]
fn making_a_repeated_field_singular_breaks() {
    breaks(
        "message M { repeated string a = 1; }\n",
        "message M { string a = 1; }\n",
        Kind::FieldLabelChanged,
        "t.v1.M.a",
    );
}

#[test]
fn adding_optional_presence_breaks() {
    let finding = breaks(
        "message M { uint64 seed = 5; }\n",
        "message M { optional uint64 seed = 5; }\n",
        Kind::FieldLabelChanged,
        "t.v1.M.seed",
    );
    assert!(
        finding.message.contains("singular to optional"),
        "{finding}"
    );
}

#[test]
fn removing_optional_presence_breaks() {
    breaks(
        "message M { optional uint64 seed = 5; }\n",
        "message M { uint64 seed = 5; }\n",
        Kind::FieldLabelChanged,
        "t.v1.M.seed",
    );
}

#[test]
fn moving_a_field_into_a_oneof_breaks() {
    let finding = breaks(
        "message M { string a = 1; string b = 2; }\n",
        "message M { string a = 1; oneof choice { string b = 2; } }\n",
        Kind::FieldOneofChanged,
        "t.v1.M.b",
    );
    assert!(finding.message.contains("into oneof `choice`"), "{finding}");
}

#[test]
fn moving_a_field_out_of_a_oneof_breaks() {
    let finding = breaks(
        "message M { oneof choice { string a = 1; string b = 2; } }\n",
        "message M { oneof choice { string a = 1; } string b = 2; }\n",
        Kind::FieldOneofChanged,
        "t.v1.M.b",
    );
    assert!(
        finding.message.contains("out of oneof `choice`"),
        "{finding}"
    );
}

#[test]
fn moving_a_field_between_oneofs_breaks() {
    breaks(
        "message M { oneof x { string a = 1; } oneof y { string b = 2; } }\n",
        "message M { oneof x { string a = 1; string b = 2; } oneof y { string c = 3; } }\n",
        Kind::FieldOneofChanged,
        "t.v1.M.b",
    );
}

#[test]
fn a_proto3_optional_is_not_a_oneof_member() {
    // The synthetic oneof of `optional` is renamed by position; only presence matters.
    allowed(
        "message M { optional string a = 1; }\n",
        "message M { optional string z = 2; optional string a = 1; }\n",
    );
}

#[test]
fn dropping_a_reserved_number_or_name_breaks() {
    breaks(
        "message M { string a = 1; reserved 2; }\n",
        "message M { string a = 1; }\n",
        Kind::ReservationRemoved,
        "t.v1.M",
    );
    breaks(
        "message M { string a = 1; reserved \"b\"; }\n",
        "message M { string a = 1; }\n",
        Kind::ReservationRemoved,
        "t.v1.M",
    );
    breaks(
        "message M { reserved 2 to 10; }\n",
        "message M { reserved 2 to 5; reserved 7 to 10; }\n",
        Kind::ReservationRemoved,
        "t.v1.M",
    );
}

#[test]
fn reservations_may_be_split_merged_or_widened() {
    allowed(
        "message M { reserved 2 to 10; }\n",
        "message M { reserved 2 to 5; reserved 6 to 10, 40; }\n",
    );
    allowed(
        "message M { reserved 2, 3; reserved 4; }\n",
        "message M { reserved 1 to max; }\n",
    );
}

// ---- enums ----

#[test]
fn removing_an_enum_breaks() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; }\n",
        "",
        Kind::EnumRemoved,
        "t.v1.E",
    );
}

#[test]
fn removing_a_nested_enum_breaks() {
    breaks(
        "message M { enum E { E_UNSPECIFIED = 0; } }\n",
        "message M {}\n",
        Kind::EnumRemoved,
        "t.v1.M.E",
    );
}

#[test]
fn removing_an_enum_value_breaks() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; }\n",
        "enum E { E_UNSPECIFIED = 0; }\n",
        Kind::EnumValueRemoved,
        "t.v1.E.E_A",
    );
}

#[test]
fn renaming_an_enum_value_breaks_as_a_removal() {
    let finding = breaks(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; }\n",
        "enum E { E_UNSPECIFIED = 0; E_B = 1; }\n",
        Kind::EnumValueRemoved,
        "t.v1.E.E_A",
    );
    assert!(finding.message.contains("now `E_B`"), "{finding}");
}

#[test]
fn removing_an_enum_value_and_reserving_its_number_and_name_is_allowed() {
    allowed(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; E_B = 2; }\n",
        "enum E { E_UNSPECIFIED = 0; E_B = 2; reserved 1; reserved \"E_A\"; }\n",
    );
}

#[test]
fn removing_an_enum_value_and_reserving_only_its_number_breaks() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; }\n",
        "enum E { E_UNSPECIFIED = 0; reserved 1; }\n",
        Kind::EnumValueRemoved,
        "t.v1.E.E_A",
    );
}

#[test]
fn renumbering_an_enum_value_breaks() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; }\n",
        "enum E { E_UNSPECIFIED = 0; E_A = 2; }\n",
        Kind::EnumValueRenumbered,
        "t.v1.E.E_A",
    );
}

#[test]
fn dropping_an_enum_reservation_breaks_and_enum_ranges_are_inclusive() {
    breaks(
        "enum E { E_UNSPECIFIED = 0; reserved 1 to 3; }\n",
        "enum E { E_UNSPECIFIED = 0; reserved 1 to 2; }\n",
        Kind::ReservationRemoved,
        "t.v1.E",
    );
    allowed(
        "enum E { E_UNSPECIFIED = 0; reserved 1 to 3; }\n",
        "enum E { E_UNSPECIFIED = 0; reserved 1; reserved 2 to 3; }\n",
    );
}

#[test]
fn adding_an_alias_for_an_existing_enum_number_is_allowed() {
    allowed(
        "enum E { E_UNSPECIFIED = 0; E_A = 1; }\n",
        "enum E { option allow_alias = true; E_UNSPECIFIED = 0; E_A = 1; E_ALSO_A = 1; }\n",
    );
}

// ---- services ----

const SERVICE_TYPES: &str = "message Req {}\nmessage Res {}\nmessage Other {}\n";

fn with_types(service: &str) -> String {
    format!("{SERVICE_TYPES}{service}")
}

#[test]
fn removing_a_service_breaks() {
    breaks(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types(""),
        Kind::ServiceRemoved,
        "t.v1.S",
    );
}

#[test]
fn removing_an_rpc_breaks() {
    breaks(
        &with_types("service S { rpc Do(Req) returns (Res); rpc Undo(Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        Kind::RpcRemoved,
        "t.v1.S.Undo",
    );
}

#[test]
fn changing_an_rpc_input_type_breaks() {
    breaks(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(Other) returns (Res); }\n"),
        Kind::RpcInputChanged,
        "t.v1.S.Do",
    );
}

#[test]
fn changing_an_rpc_output_type_breaks() {
    breaks(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(Req) returns (Other); }\n"),
        Kind::RpcOutputChanged,
        "t.v1.S.Do",
    );
}

#[test]
fn turning_server_streaming_on_or_off_breaks() {
    let finding = breaks(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(Req) returns (stream Res); }\n"),
        Kind::RpcStreamingChanged,
        "t.v1.S.Do",
    );
    assert!(finding.message.contains("response"), "{finding}");
    breaks(
        &with_types("service S { rpc Do(Req) returns (stream Res); }\n"),
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        Kind::RpcStreamingChanged,
        "t.v1.S.Do",
    );
}

#[test]
fn turning_client_streaming_on_or_off_breaks() {
    let finding = breaks(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(stream Req) returns (Res); }\n"),
        Kind::RpcStreamingChanged,
        "t.v1.S.Do",
    );
    assert!(finding.message.contains("request"), "{finding}");
    breaks(
        &with_types("service S { rpc Do(stream Req) returns (Res); }\n"),
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        Kind::RpcStreamingChanged,
        "t.v1.S.Do",
    );
}

// ---- what is allowed ----

#[test]
fn identical_contracts_are_compatible() {
    let body = "message M { string a = 1; map<string, int64> m = 2; oneof o { int32 x = 3; } }\n\
                enum E { E_UNSPECIFIED = 0; }\nservice S { rpc Do(M) returns (stream M); }\n";
    allowed(body, body);
}

#[test]
fn adding_a_message_is_allowed() {
    allowed(
        "message A {}\n",
        "message A {}\nmessage B { string x = 1; }\n",
    );
    allowed("message A {}\n", "message A { message Nested {} }\n");
}

#[test]
fn adding_a_field_is_allowed() {
    allowed(
        "message M { string a = 1; }\n",
        "message M { string a = 1; repeated int64 b = 2; optional bool c = 3; \
         map<string, string> d = 4; oneof e { string f = 5; } }\n",
    );
}

#[test]
fn adding_a_field_to_an_existing_oneof_is_allowed() {
    allowed(
        "message M { oneof o { string a = 1; } }\n",
        "message M { oneof o { string a = 1; int64 b = 2; } }\n",
    );
}

#[test]
fn adding_an_enum_or_enum_value_is_allowed() {
    allowed(
        "enum E { E_UNSPECIFIED = 0; }\n",
        "enum E { E_UNSPECIFIED = 0; E_NEW = 1; }\nenum F { F_UNSPECIFIED = 0; }\n",
    );
}

#[test]
fn adding_an_rpc_or_a_service_is_allowed() {
    allowed(
        &with_types("service S { rpc Do(Req) returns (Res); }\n"),
        &with_types(
            "service S { rpc Do(Req) returns (Res); rpc Watch(Req) returns (stream Res); }\n\
             service T { rpc Other(Other) returns (Other); }\n",
        ),
    );
}

#[test]
fn adding_comments_is_allowed() {
    allowed(
        &with_types("message M { string a = 1; }\nservice S { rpc Do(Req) returns (Res); }\n"),
        &with_types(
            "// A message.\nmessage M {\n  // The a.\n  string a = 1; // trailing\n}\n\
             /* A service. */\nservice S {\n  // Does.\n  rpc Do(Req) returns (Res);\n}\n",
        ),
    );
}

#[test]
fn adding_a_package_is_allowed() {
    let old = t_v1("message M {}\n");
    let mut new = t_v1("message M {}\n");
    new.file.extend(
        compile(&[(
            "t/v2/t.proto",
            "syntax = \"proto3\";\npackage t.v2;\nmessage M {}\n",
        )])
        .file,
    );
    assert_eq!(compare(&old, &new), []);
}

#[test]
fn moving_declarations_between_files_of_a_package_is_allowed() {
    let old = compile(&[(
        "t/v1/a.proto",
        "syntax = \"proto3\";\npackage t.v1;\nmessage A {}\nmessage B { A a = 1; }\n\
         enum E { E_UNSPECIFIED = 0; }\nservice S { rpc Do(A) returns (B); }\n",
    )]);
    let new = compile(&[
        (
            "t/v1/a.proto",
            "syntax = \"proto3\";\npackage t.v1;\nmessage A {}\n",
        ),
        (
            "t/v1/b.proto",
            "syntax = \"proto3\";\npackage t.v1;\nimport \"t/v1/a.proto\";\n\
             message B { A a = 1; }\nenum E { E_UNSPECIFIED = 0; }\n\
             service S { rpc Do(A) returns (B); }\n",
        ),
    ]);
    assert_eq!(compare(&old, &new), []);
}

#[test]
fn findings_are_listed_in_declaration_order_with_their_package() {
    let old = compile(&[
        (
            "a/v1/a.proto",
            "syntax = \"proto3\";\npackage a.v1;\nmessage A { string x = 1; string y = 2; }\n",
        ),
        (
            "b/v1/b.proto",
            "syntax = \"proto3\";\npackage b.v1;\nmessage B {}\n",
        ),
    ]);
    let new = compile(&[
        (
            "a/v1/a.proto",
            "syntax = \"proto3\";\npackage a.v1;\nmessage A { int32 x = 1; }\n",
        ),
        ("b/v1/b.proto", "syntax = \"proto3\";\npackage b.v1;\n"),
    ]);
    let findings: Vec<_> = compare(&old, &new)
        .into_iter()
        .map(|f| (f.kind, f.package, f.path))
        .collect();
    assert_eq!(
        findings,
        [
            (Kind::FieldTypeChanged, "a.v1".into(), "a.v1.A.x".into()),
            (Kind::FieldRemoved, "a.v1".into(), "a.v1.A.y".into()),
            (Kind::MessageRemoved, "b.v1".into(), "b.v1.B".into()),
        ]
    );
}

#[test]
fn kind_names_are_unique() {
    let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Kind::ALL.len());
}

// ---- properties over generated descriptor sets ----

mod props {
    use prop::collection::{btree_map, btree_set, vec};
    use proptest::prelude::*;
    use prost_types::descriptor_proto::ReservedRange;
    use prost_types::{
        EnumValueDescriptorProto, FieldDescriptorProto, MethodDescriptorProto, OneofDescriptorProto,
    };

    use super::*;

    const SCALARS: [Type; 6] = [
        Type::Int32,
        Type::Int64,
        Type::String,
        Type::Bytes,
        Type::Bool,
        Type::Double,
    ];

    /// (type index: scalar, or a message/enum of the package), label, in oneof, proto3 optional.
    type FieldShape = (usize, usize, bool, bool);

    fn field(
        package: &str,
        number: i32,
        (ty, label, in_oneof, optional): FieldShape,
    ) -> FieldDescriptorProto {
        let mut f = FieldDescriptorProto {
            name: Some(format!("f{number}")),
            number: Some(number),
            ..Default::default()
        };
        match ty {
            t if t < SCALARS.len() => f.set_type(SCALARS[t]),
            t if t == SCALARS.len() => {
                f.set_type(Type::Message);
                f.type_name = Some(format!(".{package}.M0"));
            }
            _ => {
                f.set_type(Type::Enum);
                f.type_name = Some(format!(".{package}.E0"));
            }
        }
        if label == 0 {
            f.set_label(Label::Repeated);
        } else {
            f.set_label(Label::Optional);
            if in_oneof {
                f.oneof_index = Some(0);
            } else if optional {
                f.proto3_optional = Some(true);
            }
        }
        f
    }

    fn file(
        package: &str,
        messages: &[Vec<(i32, FieldShape)>],
        enum_values: &[i32],
        reserved: &[i32],
    ) -> FileDescriptorProto {
        let message_type = messages
            .iter()
            .enumerate()
            .map(|(i, fields)| DescriptorProto {
                name: Some(format!("M{i}")),
                field: fields.iter().map(|&(n, s)| field(package, n, s)).collect(),
                oneof_decl: vec![OneofDescriptorProto {
                    name: Some("choice".into()),
                    ..Default::default()
                }],
                reserved_range: reserved
                    .iter()
                    .map(|&n| ReservedRange {
                        start: Some(n + 1000),
                        end: Some(n + 1001),
                    })
                    .collect(),
                reserved_name: reserved.iter().map(|n| format!("gone{n}")).collect(),
                ..Default::default()
            })
            .collect();
        let enum_type = vec![EnumDescriptorProto {
            name: Some("E0".into()),
            value: enum_values
                .iter()
                .map(|&n| EnumValueDescriptorProto {
                    name: Some(format!("E0_V{n}")),
                    number: Some(n),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }];
        let service = vec![ServiceDescriptorProto {
            name: Some("S".into()),
            method: (0..messages.len())
                .map(|i| MethodDescriptorProto {
                    name: Some(format!("Do{i}")),
                    input_type: Some(format!(".{package}.M{i}")),
                    output_type: Some(format!(".{package}.M0")),
                    server_streaming: Some(i % 2 == 1),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }];
        FileDescriptorProto {
            name: Some(format!("{}.proto", package.replace('.', "/"))),
            package: Some(package.to_owned()),
            syntax: Some("proto3".into()),
            message_type,
            enum_type,
            service,
            ..Default::default()
        }
    }

    fn shape() -> impl Strategy<Value = FieldShape> {
        (
            0..SCALARS.len() + 2,
            0..3usize,
            any::<bool>(),
            any::<bool>(),
        )
    }

    fn package() -> impl Strategy<Value = FileDescriptorProto> {
        (
            prop::sample::select(vec!["a.v1", "a.v2", "b.c.v1", "keel.v1"]),
            vec(btree_map(1..40i32, shape(), 0..6), 1..4),
            btree_set(0..20i32, 1..5),
            btree_set(0..5i32, 0..3),
        )
            .prop_map(|(package, messages, values, reserved)| {
                let messages: Vec<Vec<_>> = messages
                    .into_iter()
                    .map(|m| m.into_iter().collect())
                    .collect();
                let values: Vec<_> = values.into_iter().collect();
                let reserved: Vec<_> = reserved.into_iter().collect();
                file(package, &messages, &values, &reserved)
            })
    }

    fn descriptor_set() -> impl Strategy<Value = FileDescriptorSet> {
        vec(package(), 1..4).prop_map(|mut files| {
            files.sort_by(|a, b| a.package.cmp(&b.package));
            files.dedup_by(|a, b| a.package == b.package);
            FileDescriptorSet { file: files }
        })
    }

    /// Each field removal is one finding of its own kind (its number is neither reserved nor
    /// reused in the generated sets).
    fn field_positions(set: &FileDescriptorSet) -> Vec<(usize, usize, usize)> {
        set.file
            .iter()
            .enumerate()
            .flat_map(|(fi, f)| {
                f.message_type
                    .iter()
                    .enumerate()
                    .flat_map(move |(mi, m)| (0..m.field.len()).map(move |i| (fi, mi, i)))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn any_set_is_compatible_with_itself(set in descriptor_set()) {
            prop_assert_eq!(compare(&set, &set), vec![]);
        }

        #[test]
        fn adding_a_field_to_any_message_is_compatible(
            set in descriptor_set(),
            which in any::<prop::sample::Index>(),
            shape in shape(),
        ) {
            let messages: Vec<(usize, usize)> = set
                .file
                .iter()
                .enumerate()
                .flat_map(|(fi, f)| (0..f.message_type.len()).map(move |mi| (fi, mi)))
                .collect();
            let (fi, mi) = *which.get(&messages);
            let mut new = set.clone();
            let package = new.file[fi].package().to_owned();
            let message = &mut new.file[fi].message_type[mi];
            message.field.push(field(&package, 100, shape));
            prop_assert_eq!(compare(&set, &new), vec![]);
        }

        #[test]
        fn removing_any_field_is_found(
            set in descriptor_set(),
            which in any::<prop::sample::Index>(),
        ) {
            let fields = field_positions(&set);
            prop_assume!(!fields.is_empty());
            let (fi, mi, i) = *which.get(&fields);
            let mut new = set.clone();
            let removed = new.file[fi].message_type[mi].field.remove(i);
            let findings = compare(&set, &new);
            prop_assert_eq!(findings.len(), 1);
            prop_assert_eq!(findings[0].kind, Kind::FieldRemoved);
            prop_assert!(findings[0].path.ends_with(removed.name()));
        }
    }
}
