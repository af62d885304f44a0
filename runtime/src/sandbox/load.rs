//! Loading a component: its bytes hashed, compiled (or read back from the
//! compiled cache, keyed by sha256 and the engine's settings), linked with
//! the world it was built against, and described once by its `describe`
//! export — all before it serves an event.

use super::*;

impl Sandbox {
    /// Compiles (or loads from the cache), links and describes a handler.
    ///
    /// # Errors
    /// When the file is missing or not a component, does not target the
    /// `handler` world, or traps in `describe`.
    pub fn load(&self, name: &str, config: &HandlerConfig) -> Result<Loaded> {
        let path = self.component_path(config);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("failed to read component {} of handler {name}", path.display()))?;
        self.load_bytes(name, config, &path, &bytes)
    }

    /// [`Sandbox::load`] from bytes already read.
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub fn load_bytes(&self, name: &str, config: &HandlerConfig, path: &Path, bytes: &[u8]) -> Result<Loaded> {
        let start = Instant::now();
        let sha256 = sha256_hex(bytes);
        let (component, from_cache) = self
            .compile(bytes, &sha256, &format!("handler {name} ({})", path.display()))
            .with_context(|| format!("handler {name}: {} is not a loadable component", path.display()))?;
        let pre = self.linkers.pre(&self.engine, &component).map_err(anyhow_err).with_context(|| {
            format!(
                "handler {name}: {} does not fit the {} handler world (or imports what the sandbox does not provide)",
                path.display(),
                World::of(&self.engine, &component)
            )
        })?;
        let mut loaded = Loaded {
            name: name.to_string(),
            path: path.to_path_buf(),
            sha256,
            info: Info::default(),
            config: config.clone(),
            settings: Arc::new(settings_of(config)),
            from_cache,
            load_time: Duration::ZERO,
            pre,
        };
        loaded.info = self.describe(&loaded).with_context(|| format!("handler {name}: describe() failed"))?;
        if loaded.world() == World::V01 {
            tracing::debug!(handler = %name, world = %World::V01, "linked with the 0.1.0 world: its errors are all retried, and it declares no emits or contracts");
        }
        loaded.load_time = start.elapsed();
        Ok(loaded)
    }

    /// The compiled form of a component: from `cache/` when a previous run
    /// compiled the same bytes with a compatible engine, else compiled now
    /// and stored there.
    fn compile(&self, bytes: &[u8], sha256: &str, what: &str) -> Result<(Component, bool)> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let cached = self.cache_dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if cached.is_file() {
            // SAFETY: files in cache/ are written only by `compile` below, from
            // `Component::serialize` of this engine configuration (the file name
            // carries the compatibility hash); deserialize checks the header too.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "ignoring unusable compiled-component cache entry")
                }
            }
        }
        if !bytes.starts_with(b"\0asm") {
            bail!("not a WebAssembly file (no \\0asm header)");
        }
        // A 12-18 MB Python or JavaScript component compiles for seconds:
        // say so before, not after.
        tracing::info!(
            target: PROGRESS,
            "compiling {what}, {:.1} MB, not in the compiled cache yet (a Python or JavaScript component takes several seconds; later loads read it from the cache)",
            bytes.len() as f64 / 1e6
        );
        let component = Component::from_binary(&self.engine, bytes).map_err(anyhow_err)?;
        if let Ok(serialized) = component.serialize() {
            let stored = std::fs::create_dir_all(&self.cache_dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| fsio::write_durably(&self.cache_dir, &cached, &serialized));
            if let Err(e) = stored {
                tracing::warn!(file = %cached.display(), error = %format!("{e:#}"), "could not cache the compiled component");
            }
        }
        Ok((component, false))
    }

    fn describe(&self, loaded: &Loaded) -> Result<Info> {
        let trigger = Event {
            event_id: String::new(),
            event_type: String::new(),
            timestamp: String::new(),
            source: String::new(),
            correlation_id: None,
            metadata: Default::default(),
            payload: Default::default(),
        };
        let mut store = self.store(loaded, &trigger, &loaded.config.limits, None)?;
        let instance = loaded.pre.instantiate(&mut store).map_err(anyhow_err)?;
        instance.describe(&mut store).map_err(anyhow_err)
    }
}
