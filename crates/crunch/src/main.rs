fn main() {
    println!("crunch");
}
