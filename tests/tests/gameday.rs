//! The key-rotation game day in the suite: rotation under light load, the retained key then
//! revoked; refreshing clients lose nothing and the old key's tokens fail cleanly at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_key_rotation_game_day_passes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gameday"))
        .arg("key-rotation")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && last.ends_with("verdict=pass"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(last.starts_with("faults=1 requests="), "{last}");
    assert!(last.contains(" lost=0 "), "{last}");
}
