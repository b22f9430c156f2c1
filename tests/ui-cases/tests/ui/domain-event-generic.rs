use events_core::domain_event;

#[domain_event]
struct Created<T> {
    value: T,
}

fn main() {
    let _ = Created { value: 1 }.value;
}
