//! The store's unit tests: reopen, rotation, checksum fallback, crashes
//! between the steps of a durable write, the outbox, and the old layout's migration.

use super::*;

fn save(store: &Store, checkpoint: &Checkpoint) {
    store.save_checkpoint(&checkpoint.state, &checkpoint.residual).unwrap();
}

fn state(round: u64) -> Checkpoint {
    Checkpoint {
        state: ModelState {
            round,
            lineage: [round as u8; 32],
            params: vec![round as f32, 1.5, -2.0],
            momentum: vec![0.25; 3],
        },
        residual: if round.is_multiple_of(2) { vec![] } else { vec![0.5, round as f32, -0.5] },
    }
}

/// The names in the checkpoint folder, sorted.
fn files_in(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.checkpoint_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

pub(crate) fn delta(round: u64) -> SignedDelta {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let codec = starling_protocol::Codec::Dense;
    SignedDelta::sign(
        &key,
        starling_protocol::RunId([0; 32]),
        round,
        [9; 32],
        10,
        codec,
        codec.encode(&[1.0, 2.0, 3.0]),
    )
}

#[test]
fn identity_is_created_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap().identity().unwrap();
    let again = Store::open(dir.path()).unwrap().identity().unwrap();
    assert_eq!(first.to_bytes(), again.to_bytes());
}

#[test]
fn spec_and_checkpoints_survive_reopen_and_only_the_last_k_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.set_spec(&RunSpec::builtin()).unwrap();
        for r in 0..6 {
            save(&store, &state(r));
            assert!(files_in(&store).iter().filter(|n| n.starts_with("state-")).count() <= KEEP_CHECKPOINTS);
        }
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.spec().unwrap(), Some(RunSpec::builtin()));
    let scan = store.latest_checkpoint(3).unwrap();
    assert_eq!(scan.checkpoint, Some(state(5)));
    assert!(scan.skipped.is_empty());
    assert_eq!(store.checkpoint_rounds().unwrap(), vec![4, 5]);
    // Round 4's state, round 5's state and round 5's residual (round 4 has none).
    let names = files_in(&store);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].starts_with("residual-") && names[1].starts_with("state-00000004-"), "{names:?}");
}

#[test]
fn the_files_are_safetensors_named_as_the_layout_says() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.set_layout(
        Layout::new(vec![("l00.weight".into(), vec![1, 2]), ("l00.bias".into(), vec![1])]).unwrap(),
    );
    save(&store, &state(7));
    let bytes = store.raw_checkpoint(7).unwrap().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(names, ["l00.bias", "l00.weight", "outer_momentum.l00.bias", "outer_momentum.l00.weight"]);
    let weight = file.tensor("l00.weight").unwrap();
    assert_eq!((weight.shape(), weight.data()), (&[1, 2][..], bytemuck::cast_slice::<f32, u8>(&[7.0, 1.5])));
    // The flat vector comes back in the layout's order, not the names' order.
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(7)));
}

#[test]
fn an_older_state_saved_replaces_the_checkpoints_of_later_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for r in 3..6 {
        save(&store, &state(r));
    }
    save(&store, &state(4));
    assert_eq!(store.checkpoint_rounds().unwrap(), vec![4]);
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(4)));
    assert_eq!(files_in(&store).len(), 1, "round 5's files are deleted with its pointer");
}

#[test]
fn a_torn_or_rotten_file_falls_back_to_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    save(&store, &state(2));
    save(&store, &state(3));
    let whole = store.raw_checkpoint(3).unwrap().unwrap();
    // A file whose write stopped half-way.
    store.put_raw_checkpoint(3, &whole[..whole.len() / 2]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let scan = store.latest_checkpoint(3).unwrap();
    assert_eq!(scan.checkpoint, Some(state(2)));
    assert_eq!(scan.skipped.len(), 1);
    assert!(scan.skipped[0].reason.contains("checksum"), "{:?}", scan.skipped);

    // One whose bytes rotted; and one whose residual file did.
    let mut rotten = whole.clone();
    rotten[whole.len() - 1] ^= 0x01;
    store.put_raw_checkpoint(3, &rotten).unwrap();
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(2)));
    store.put_raw_checkpoint(3, &whole).unwrap();
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(3)));
    let residual = files_in(&store).into_iter().find(|n| n.starts_with("residual-")).unwrap();
    std::fs::write(store.checkpoint_dir().join(residual), b"rot").unwrap();
    let scan = store.latest_checkpoint(3).unwrap();
    assert_eq!((scan.checkpoint, scan.skipped[0].round), (Some(state(2)), 3));
}

#[test]
fn a_crash_before_the_rename_or_before_the_pointer_leaves_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        save(&store, &state(1));
    }
    let folder = dir.path().join(files::DIR);
    // Killed while writing the temporary file ...
    std::fs::write(folder.join("writing.tmp"), b"half a state").unwrap();
    // ... or after the rename, before sled pointed at the file.
    let orphan = files::state_name(2, &[7; 32]);
    std::fs::write(folder.join(&orphan), b"a whole file no pointer names").unwrap();
    std::fs::write(folder.join("notes.txt"), b"not ours").unwrap();

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(1)));
    let names = files_in(&store);
    assert!(!names.contains(&"writing.tmp".to_string()) && !names.contains(&orphan), "{names:?}");
    assert!(names.contains(&"notes.txt".to_string()), "only the store's own files are deleted");
    save(&store, &state(2));
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(2)));
}

#[test]
fn a_checkpoint_of_another_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    save(&store, &state(1));
    let scan = store.latest_checkpoint(4).unwrap();
    assert_eq!(scan.checkpoint, None);
    assert_eq!(scan.skipped.len(), 1);
}

#[test]
fn the_own_delta_survives_reopen_and_a_torn_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let delta = delta(4);
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.outbox(3, 1024).unwrap().is_none());
        store.save_outbox(&delta, &[0.5, 0.0, 0.25]).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let saved = store.outbox(3, 1024).unwrap().unwrap();
    // No checkpoint of round 4: the residual was not needed, and not written.
    assert_eq!((saved.delta.id(), saved.residual), (delta.id(), Ok(None)));
    let record = store.outbox.get(OUTBOX_KEY).unwrap().unwrap();
    store.outbox.insert(OUTBOX_KEY, &record[..record.len() / 2]).unwrap();
    assert!(store.outbox(3, 1024).unwrap_err().reason.contains("checksum"));
}

#[test]
fn a_torn_delta_file_still_tells_which_round_was_signed() {
    let dir = tempfile::tempdir().unwrap();
    let delta = delta(4);
    let store = Store::open(dir.path()).unwrap();
    store.save_outbox(&delta, &[]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let file = files_in(&store).into_iter().find(|n| n.starts_with("delta-")).unwrap();
    let path = store.checkpoint_dir().join(file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let unreadable = store.outbox(3, 1024).unwrap_err();
    assert!(unreadable.reason.contains("checksum"), "{unreadable}");
    assert_eq!(unreadable.signed, Some(Box::new(delta.header)), "the record keeps the signed header");
}

#[test]
fn the_residual_is_written_once_a_round_and_shared_by_outbox_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut at4 = state(4);
    save(&store, &at4);
    // Round 4 is trained from the newest checkpoint: its residual goes with the delta.
    let residual = vec![0.5, 0.0, 0.25];
    store.save_outbox(&delta(4), &residual).unwrap();
    assert_eq!(store.outbox(3, 1024).unwrap().unwrap().residual, Ok(Some(residual.clone())));
    let written = files_in(&store).into_iter().find(|n| n.starts_with("residual-")).unwrap();
    let mtime = |n: &str| std::fs::metadata(store.checkpoint_dir().join(n)).unwrap().modified().unwrap();
    let before = mtime(&written);
    // The merge's checkpoint finds the same residual on disk and points at it.
    at4.state.round = 5;
    at4.residual = residual.clone();
    save(&store, &at4);
    let residuals: Vec<String> =
        files_in(&store).into_iter().filter(|n| n.starts_with("residual-")).collect();
    assert_eq!(residuals, vec![written.clone()]);
    assert_eq!(mtime(&written), before, "not rewritten");
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint.unwrap().residual, residual);
    // Past K, the file goes once neither a checkpoint nor the outbox names it.
    store.save_outbox(&delta(6), &[1.0, 1.0, 1.0]).unwrap();
    save(&store, &state(6));
    save(&store, &state(8));
    let names = files_in(&store);
    assert!(names.iter().all(|n| !n.starts_with("residual-")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("delta-")).count(), 1, "the outbox's delta: {names:?}");
}

#[test]
fn a_datadir_of_the_old_layout_is_read_then_migrated_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let residual = vec![0.5, 0.0, 0.25];
    {
        let store = Store::open(dir.path()).unwrap();
        for r in [2, 3] {
            store.legacy.insert(u64::to_be_bytes(r), legacy::record(&state(r))).unwrap();
        }
        store.outbox.insert(legacy::OUTBOX_KEY, legacy::outbox_record(&delta(3), &residual)).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    // Inspection reads it as it is.
    assert_eq!(store.checkpoint_rounds().unwrap(), vec![2, 3]);
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(3)));
    assert_eq!(store.outbox(3, 1024).unwrap().unwrap().residual, Ok(Some(residual.clone())));

    let migrated = store.migrate_legacy(3, 1024).unwrap();
    assert_eq!(migrated, Some(Migration { round: Some(3), unreadable: 0 }));
    assert!(store.legacy.is_empty() && store.outbox.get(legacy::OUTBOX_KEY).unwrap().is_none());
    store.set_spec(&RunSpec::builtin()).unwrap();
    let store = store.compact().unwrap();
    assert_eq!(store.spec().unwrap(), Some(RunSpec::builtin()), "the records are copied");
    drop(store);
    assert!(!dir.path().join(DB_COMPACTING).exists() && !dir.path().join(DB_REPLACED).exists());
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.migrate_legacy(3, 1024).unwrap(), None, "once");
    assert_eq!(store.checkpoint_rounds().unwrap(), vec![3]);
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(3)));
    let saved = store.outbox(3, 1024).unwrap().unwrap();
    assert_eq!((saved.delta.id(), saved.residual), (delta(3).id(), Ok(Some(residual))));
}

#[test]
fn a_compaction_cut_short_by_a_crash_is_finished_or_undone_on_open() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap().set_spec(&RunSpec::builtin()).unwrap();
    // Killed while copying: the copy is deleted, the database is the one.
    std::fs::create_dir(dir.path().join(DB_COMPACTING)).unwrap();
    assert_eq!(Store::open(dir.path()).unwrap().spec().unwrap(), Some(RunSpec::builtin()));
    assert!(!dir.path().join(DB_COMPACTING).exists());
    // Killed between the two renames: the whole copy takes the database's place.
    std::fs::rename(dir.path().join(DB), dir.path().join(DB_COMPACTING)).unwrap();
    std::fs::create_dir(dir.path().join(DB_REPLACED)).unwrap();
    assert_eq!(Store::open(dir.path()).unwrap().spec().unwrap(), Some(RunSpec::builtin()));
    assert!(!dir.path().join(DB_REPLACED).exists());
}

#[test]
fn kept_sync_chunks_survive_reopen_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.save_sync_chunk(&[7; 32], 2, b"two").unwrap();
        store.save_sync_chunk(&[7; 32], 0, b"zero").unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let (root, chunks) = store.sync_chunks().unwrap().unwrap();
    assert_eq!(root, [7; 32]);
    assert_eq!(chunks, vec![(0, b"zero".to_vec()), (2, b"two".to_vec())]);
    assert!(dir.path().join("sync").is_dir(), "the bytes are in a file, not in sled");
    store.clear_sync_chunks().unwrap();
    assert!(store.sync_chunks().unwrap().is_none());
    assert!(!dir.path().join("sync").exists(), "the file goes with them");
}

#[test]
fn a_kept_chunk_whose_bytes_are_lost_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.save_sync_chunk(&[7; 32], 0, b"zero").unwrap();
    store.save_sync_chunk(&[7; 32], 3, b"three").unwrap();
    // A crash kept sled's records but not all the file's bytes.
    let file = std::fs::read_dir(dir.path().join("sync")).unwrap().next().unwrap().unwrap().path();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(4).unwrap();
    let (_, chunks) = store.sync_chunks().unwrap().unwrap();
    assert_eq!(chunks, vec![(0, b"zero".to_vec())]);
}

#[test]
fn two_stores_cannot_share_a_datadir() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().expect("second open must fail");
    assert!(err.to_string().contains("--datadir"), "{err}");
}

#[test]
fn a_fetched_state_whole_on_disk_becomes_the_checkpoint_without_a_second_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fetched = state(5);
    let snapshot = starling_protocol::StateSnapshot::of_flat(&fetched.state);
    for index in (0..snapshot.manifest.chunk_count() as u32).rev() {
        store.save_sync_chunk(&snapshot.root, index, snapshot.chunk(index).unwrap()).unwrap();
    }
    let kept = std::fs::read_dir(dir.path().join("sync")).unwrap().next().unwrap().unwrap().path();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&kept).unwrap());
    let served =
        store.save_fetched_checkpoint(&fetched.state, &fetched.residual, Some(&snapshot.root)).unwrap();
    assert_eq!(served.manifest, snapshot.manifest);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&served.path).unwrap()),
        inode,
        "moved, not rewritten"
    );
    assert!(!dir.path().join("sync").exists() && store.sync_chunks().unwrap().is_none());
    let loaded = store.latest_checkpoint(3).unwrap().checkpoint.unwrap();
    assert_eq!(loaded, fetched);
}

#[test]
fn a_fetched_state_not_whole_on_disk_is_written_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fetched = state(6);
    let root = starling_protocol::StateSnapshot::of_flat(&fetched.state).root;
    store.save_sync_chunk(&root, 0, b"not the state file").unwrap();
    store.save_fetched_checkpoint(&fetched.state, &fetched.residual, Some(&root)).unwrap();
    assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint.unwrap(), fetched);
    assert!(store.sync_chunks().unwrap().is_none());
}

#[test]
fn a_state_is_served_from_its_checkpoint_file_or_a_file_written_to_serve_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let saved = store.save_checkpoint(&state(3).state, &[]).unwrap();
    let served = store.serve_state(&state(3).state).unwrap();
    assert_eq!((&served.path, &served.manifest), (&saved.path, &saved.manifest), "the checkpoint's own file");
    for round in 4..8 {
        let served = store.serve_state(&state(round).state).unwrap();
        assert!(files::is_served(served.path.file_name().unwrap().to_str().unwrap()));
        assert_eq!(served.manifest, starling_protocol::StateSnapshot::of_flat(&state(round).state).manifest);
    }
    let served: Vec<String> = files_in(&store).into_iter().filter(|n| files::is_served(n)).collect();
    assert_eq!(served.len(), SERVED_FILES, "only the last few: {served:?}");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(!files_in(&store).iter().any(|n| files::is_served(n)), "none survives a restart");
}
