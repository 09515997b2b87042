pub(crate) struct IdlePool;
impl IdlePool {
    pub fn new(_: usize) -> Self {
        IdlePool
    }
}
impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdlePool")
    }
}
